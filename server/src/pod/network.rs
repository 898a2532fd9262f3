//! A sandbox's network: the native built-in network or a CNI network, attached and
//! detached.

use super::*;

impl PodManager {
    /// Attaches the pod to the native built-in network; a pod with hostPorts then runs
    /// the portmap plugin with the native attachment as its `prevResult`. On error the
    /// caller's teardown undoes what was done.
    pub(super) async fn native_add(&self, sb: &Sandbox, netns: &Path) -> Result<Vec<String>> {
        let att = self.attachment(sb, netns);
        let runner = self.cni_runner();
        let has_ports = att.capabilities.contains_key("portMappings");
        if has_ports && cni::find_plugin(&runner.plugin_dirs, "portmap").is_none() {
            return Err(Error::failed_precondition(format!(
                "the pod has hostPort mappings, which need CNI plugin \"portmap\", but it is not in {} (install containernetworking-plugins)",
                runner
                    .plugin_dirs
                    .iter()
                    .map(|d| d.display().to_string())
                    .collect::<Vec<_>>()
                    .join(", ")
            )));
        }
        let cidrs = self
            .pod_cidrs
            .read()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .clone();
        let subnet = cni::native::pod_subnet(&self.config.cni.builtin_subnet, &cidrs)
            .map_err(|e| Error::failed_precondition(format!("pod network: {e}")))?;
        let native = Arc::clone(&self.native);
        let bridge = self.config.cni.builtin_bridge.clone();
        let id = sb.id.clone();
        let path = netns.to_path_buf();
        let started = std::time::Instant::now();
        let result = tokio::task::spawn_blocking(move || native.add(&bridge, &subnet, &id, &path))
            .await
            .map_err(Error::task("pod network"))?
            .map_err(|source| Error::NativeNetwork {
                id: sb.id.clone(),
                source,
            })?;
        tracing::debug!(
            pod = %sb.id,
            duration_ms = started.elapsed().as_secs_f64() * 1000.0,
            "attached to the native network"
        );
        if has_ports {
            runner
                .add_after(&cni::native_portmap(), &att, Some(result.clone()))
                .await
                .map_err(|source| Error::HostPorts {
                    id: sb.id.clone(),
                    source,
                })?;
        }
        Ok(result_ips(&result))
    }

    /// Detaches the pod from the native network: portmap DEL (hostPort pods only), then
    /// the host veth and the pod's addresses. Idempotent.
    pub(super) async fn native_del(&self, sb: &Sandbox, netns: &Path) -> Result<()> {
        let att = self.attachment(sb, netns);
        let mut first_error = None;
        if att.capabilities.contains_key("portMappings")
            && let Err(e) = self.cni_runner().del(&cni::native_portmap(), &att).await
        {
            first_error = Some(Error::NetworkTeardown(e));
        }
        let native = Arc::clone(&self.native);
        let id = sb.id.clone();
        let res = tokio::task::spawn_blocking(move || native.del(&id))
            .await
            .map_err(Error::task("pod network"))
            .and_then(|r| r.map_err(Error::NativeTeardown));
        match (first_error, res) {
            (Some(e), _) | (None, Err(e)) => Err(e),
            (None, Ok(())) => Ok(()),
        }
    }

    pub(super) fn network(&self) -> Result<NetworkConfig> {
        let cidrs = self
            .pod_cidrs
            .read()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .clone();
        cni::check_ready(&self.cni_config(), &cidrs)
            .map_err(|e| Error::failed_precondition(format!("pod network is not ready: {e}")))
    }

    pub(super) fn attachment(&self, sb: &Sandbox, netns: &Path) -> Attachment {
        let meta = sb.metadata();
        let mut caps = Map::new();
        let ports: Vec<Value> = sb
            .config
            .port_mappings
            .iter()
            .filter(|p| p.host_port > 0)
            .map(|p| {
                let proto = match berth_proto::v1::Protocol::try_from(p.protocol) {
                    Ok(berth_proto::v1::Protocol::Udp) => "udp",
                    Ok(berth_proto::v1::Protocol::Sctp) => "sctp",
                    _ => "tcp",
                };
                json!({
                    "hostPort": p.host_port,
                    "containerPort": p.container_port,
                    "protocol": proto,
                    "hostIP": p.host_ip,
                })
            })
            .collect();
        if !ports.is_empty() {
            caps.insert("portMappings".into(), Value::Array(ports));
        }
        Attachment {
            container_id: sb.id.clone(),
            netns: netns.to_path_buf(),
            args: vec![
                ("IgnoreUnknown".into(), "1".into()),
                ("K8S_POD_NAMESPACE".into(), meta.namespace.clone()),
                ("K8S_POD_NAME".into(), meta.name.clone()),
                ("K8S_POD_INFRA_CONTAINER_ID".into(), sb.id.clone()),
                ("K8S_POD_UID".into(), meta.uid),
            ],
            capabilities: caps,
        }
    }
}
