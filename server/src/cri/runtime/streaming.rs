//! Exec, Attach and PortForward: each request is checked and cached by the streaming
//! server, which answers with the URL the client connects to.

use berth_proto::v1::{
    AttachRequest, AttachResponse, ExecRequest, ExecResponse, PortForwardRequest,
    PortForwardResponse,
};
use berth_stream::{RequestError, StreamServer};
use tonic::Status;

use crate::cri::CriService;
use crate::error::Error;

pub(super) async fn exec(svc: &CriService, r: ExecRequest) -> Result<ExecResponse, Status> {
    let req = berth_stream::ExecRequest {
        container_id: r.container_id,
        tty: r.tty,
        stdin: r.stdin,
        stdout: r.stdout,
        stderr: r.stderr,
        cmd: r.cmd,
    };
    let url = register(
        svc,
        req,
        berth_stream::ExecRequest::validate,
        |req| running_container(svc, &mut req.container_id),
        StreamServer::register_exec,
    )?;
    Ok(ExecResponse { url })
}

pub(super) async fn attach(svc: &CriService, r: AttachRequest) -> Result<AttachResponse, Status> {
    let req = berth_stream::AttachRequest {
        container_id: r.container_id,
        tty: r.tty,
        stdin: r.stdin,
        stdout: r.stdout,
        stderr: r.stderr,
    };
    let url = register(
        svc,
        req,
        berth_stream::AttachRequest::validate,
        |req| running_container(svc, &mut req.container_id),
        StreamServer::register_attach,
    )?;
    Ok(AttachResponse { url })
}

pub(super) async fn port_forward(
    svc: &CriService,
    r: PortForwardRequest,
) -> Result<PortForwardResponse, Status> {
    let req = berth_stream::PortForwardRequest {
        pod_sandbox_id: r.pod_sandbox_id,
        ports: r.port,
    };
    let url = register(
        svc,
        req,
        berth_stream::PortForwardRequest::validate,
        |req| ready_sandbox(svc, &mut req.pod_sandbox_id),
        StreamServer::register_portforward,
    )?;
    Ok(PortForwardResponse { url })
}

/// The URL of a streaming request: `validate`d (InvalidArgument), its target
/// `resolve`d to the full id of a live container or pod, then cached by `cache`.
fn register<R>(
    svc: &CriService,
    mut req: R,
    validate: fn(&R) -> Result<(), RequestError>,
    resolve: impl FnOnce(&mut R) -> Result<(), Status>,
    cache: fn(&StreamServer, R) -> Result<String, RequestError>,
) -> Result<String, Status> {
    let invalid = |e: RequestError| Error::InvalidArgument(e.to_string());
    validate(&req).map_err(invalid)?;
    resolve(&mut req)?;
    Ok(cache(svc.streams()?, req).map_err(invalid)?)
}

/// Replaces a container id (or unique prefix) by the full id of that running container.
fn running_container(svc: &CriService, id: &mut String) -> Result<(), Status> {
    *id = crate::stream::check_running(&svc.shared.containers, id)?;
    Ok(())
}

/// Replaces a sandbox id (or unique prefix) by the full id of that ready sandbox.
fn ready_sandbox(svc: &CriService, id: &mut String) -> Result<(), Status> {
    let sb = svc.shared.pods.get(id)?;
    if !sb.is_ready() {
        return Err(
            Error::FailedPrecondition(format!("pod sandbox {} is not ready", sb.id)).into(),
        );
    }
    *id = sb.id.clone();
    Ok(())
}
