//! The berthd ↔ berth-monitor protocol, defined once for both sides.
//!
//! berthd starts one `berth-monitor run` per container and then talks to it in four
//! ways, all typed here:
//! - the **create report**: the monitor's first line on its stdout, JSON, saying the
//!   container's init pid or why the create failed ([`CreateReport`]);
//! - the **exit record**: `exit.json` in the container's directory, written durably
//!   when the init exits ([`ExitRecord`]);
//! - the **attach socket** `<runtime root>/<id>/attach.sock`: length-prefixed frames
//!   both ways ([`attach`]);
//! - the **control socket** `<runtime root>/<id>/ctl.sock`: one line per connection
//!   ([`ControlRequest`], [`ControlReply`]).
//!
//! Monitors outlive berthd, so an upgraded berthd meets monitors of the previous
//! release: the create report and the exit record carry a `version`, and reading one
//! without it decodes the previous release's format ([`LEGACY_VERSION`]). What a
//! monitor writes still carries the previous fields too (`spec_fault`, the RFC 3339
//! `exited_at`), so a berthd rolled back one release reads it as well. The socket wire
//! formats have not changed since that release.

use serde::{Deserialize, Serialize};
use std::path::Path;

/// The protocol this build speaks.
pub const PROTOCOL_VERSION: u32 = 2;
/// What a report without a `version` is: the release before versions were written.
pub const LEGACY_VERSION: u32 = 1;

/// The attach socket's name in the container's runtime directory.
pub const ATTACH_SOCKET: &str = "attach.sock";
/// The control socket's name in the container's runtime directory.
pub const CONTROL_SOCKET: &str = "ctl.sock";
/// Where an OCI runtime sends a terminal's master (the monitor's own directory).
pub const CONSOLE_SOCKET: &str = "console.sock";
/// The exit record's name in berthd's directory of the container.
pub const EXIT_FILE: &str = "exit.json";

/// A message that does not decode.
#[derive(Debug, thiserror::Error)]
pub enum ProtocolError {
    /// Not the JSON of this message.
    #[error("undecodable monitor message {text:?}: {source}")]
    Json {
        /// The message, as received.
        text: String,
        /// Why it does not decode.
        #[source]
        source: serde_json::Error,
    },
    /// JSON, but without what the message must say.
    #[error("monitor message {text:?} {problem}")]
    Incomplete {
        /// The message, as received.
        text: String,
        /// What is missing or wrong.
        problem: &'static str,
    },
}

/// Why a create failed, as far as berthd's answer to its client is concerned.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ErrorKind {
    /// The pod spec or image asked for something that cannot be done (a missing
    /// executable or working directory, a refused mount): the caller's mistake.
    SpecFault,
    /// The node ran out of something (fds, memory, disk): a retry may work.
    ResourceExhausted,
    /// Anything else: the node or Berth failed.
    Internal,
}

/// A failed create, as the monitor reports it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MonitorError {
    /// How berthd should classify it.
    pub kind: ErrorKind,
    /// The failure and its causes, one line.
    pub message: String,
    /// The step of the container's init that failed (`working directory`, ...).
    pub step: Option<String>,
    /// The errno of that step, by name (`ENOENT`).
    pub errno: Option<String>,
}

/// The monitor's first line on its stdout.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CreateReport {
    /// The container exists; its init has this (host) pid and waits for start.
    Created {
        /// The init's pid, never 0 or negative.
        pid: i32,
    },
    /// The container could not be created; the monitor exits, having removed it.
    Failed(MonitorError),
}

/// The create report on the wire. Every field optional: versions add fields.
#[derive(Debug, Default, Serialize, Deserialize)]
struct CreateReportWire {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    version: Option<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pid: Option<i64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    error: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    kind: Option<ErrorKind>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    step: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    errno: Option<String>,
    /// The previous release's classification, still written for a rolled-back berthd.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    spec_fault: Option<bool>,
}

impl CreateReport {
    /// The report as one line of JSON (without the newline).
    pub fn encode(&self) -> String {
        let wire = match self {
            CreateReport::Created { pid } => CreateReportWire {
                version: Some(PROTOCOL_VERSION),
                pid: Some(i64::from(*pid)),
                ..CreateReportWire::default()
            },
            CreateReport::Failed(e) => CreateReportWire {
                version: Some(PROTOCOL_VERSION),
                error: Some(e.message.clone()),
                kind: Some(e.kind),
                step: e.step.clone(),
                errno: e.errno.clone(),
                spec_fault: Some(e.kind == ErrorKind::SpecFault),
                ..CreateReportWire::default()
            },
        };
        serde_json::to_string(&wire).unwrap_or_else(|_| {
            r#"{"error":"berth-monitor could not encode its report"}"#.to_owned()
        })
    }

    /// Decodes a report of this or an earlier protocol version; returns the version
    /// the monitor speaks with it.
    pub fn decode(line: &str) -> Result<(u32, CreateReport), ProtocolError> {
        let wire: CreateReportWire =
            serde_json::from_str(line).map_err(|source| ProtocolError::Json {
                text: line.to_owned(),
                source,
            })?;
        let incomplete = |problem| ProtocolError::Incomplete {
            text: line.to_owned(),
            problem,
        };
        let version = wire.version.unwrap_or(LEGACY_VERSION);
        let report = match (wire.error, wire.pid) {
            (Some(message), _) => {
                let kind = match wire.kind {
                    Some(kind) => kind,
                    None => legacy_kind(&message, wire.spec_fault == Some(true)),
                };
                CreateReport::Failed(MonitorError {
                    kind,
                    message,
                    step: wire.step,
                    errno: wire.errno,
                })
            }
            (None, Some(pid)) => CreateReport::Created {
                pid: i32::try_from(pid)
                    .ok()
                    .filter(|p| *p > 0)
                    .ok_or_else(|| incomplete("names no valid pid"))?,
            },
            (None, None) => return Err(incomplete("has neither a pid nor an error")),
        };
        Ok((version, report))
    }
}

/// How berthd classified the failures of monitors that did not send a kind (version
/// 1): by the monitor's `spec_fault` flag for the init's failures, and by words of the
/// message (an OCI runtime's "executable file not found", "no such file or
/// directory"; an errno 23/24 formatted into the text).
fn legacy_kind(message: &str, spec_fault: bool) -> ErrorKind {
    if spec_fault || message.contains("executable") || message.contains("no such file") {
        ErrorKind::SpecFault
    } else if message.contains("(os error 24)") || message.contains("(os error 23)") {
        ErrorKind::ResourceExhausted
    } else {
        ErrorKind::Internal
    }
}

/// How the container's init ended, written by the monitor once the init is reaped.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ExitRecord {
    /// The init's exit code; 128 + signal when a signal killed it.
    pub exit_code: i32,
    /// The signal that killed the init, if any.
    pub signal: Option<i32>,
    /// When the monitor saw the exit, nanoseconds since the Unix epoch.
    pub exited_at_ns: i64,
    /// Whether the cgroup recorded an OOM kill while the container ran.
    pub oom_killed: bool,
}

/// The exit record on the wire.
#[derive(Debug, Serialize, Deserialize)]
struct ExitRecordWire {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    version: Option<u32>,
    exit_code: i32,
    #[serde(default)]
    signal: Option<i32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    exited_at_ns: Option<i64>,
    /// RFC 3339 with nanoseconds: all the previous release wrote, still written for a
    /// rolled-back berthd.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    exited_at: Option<String>,
    #[serde(default)]
    oom_killed: bool,
}

impl ExitRecord {
    /// The exit code berthd reports: 128 + signal for a signal death (also when a
    /// monitor recorded the signal with exit code 0).
    pub fn status_code(&self) -> i32 {
        match self.signal {
            Some(sig) if self.exit_code == 0 => 128 + sig,
            _ => self.exit_code,
        }
    }

    /// The record as JSON.
    pub fn encode(&self) -> Vec<u8> {
        let at = u64::try_from(self.exited_at_ns).unwrap_or(0);
        let wire = ExitRecordWire {
            version: Some(PROTOCOL_VERSION),
            exit_code: self.exit_code,
            signal: self.signal,
            exited_at_ns: Some(self.exited_at_ns),
            exited_at: Some(crate::time::rfc3339_nano(
                std::time::UNIX_EPOCH + std::time::Duration::from_nanos(at),
            )),
            oom_killed: self.oom_killed,
        };
        serde_json::to_vec(&wire).unwrap_or_default()
    }

    /// Decodes a record of this or the previous release.
    pub fn decode(bytes: &[u8]) -> Result<ExitRecord, ProtocolError> {
        let text = || String::from_utf8_lossy(bytes).into_owned();
        let wire: ExitRecordWire =
            serde_json::from_slice(bytes).map_err(|source| ProtocolError::Json {
                text: text(),
                source,
            })?;
        let exited_at_ns = match (wire.exited_at_ns, &wire.exited_at) {
            (Some(ns), _) => ns,
            (None, Some(s)) => {
                crate::time::parse_rfc3339_nano(s).ok_or_else(|| ProtocolError::Incomplete {
                    text: text(),
                    problem: "has an exit time that is not RFC 3339",
                })?
            }
            (None, None) => {
                return Err(ProtocolError::Incomplete {
                    text: text(),
                    problem: "has no exit time",
                });
            }
        };
        Ok(ExitRecord {
            exit_code: wire.exit_code,
            signal: wire.signal,
            exited_at_ns,
            oom_killed: wire.oom_killed,
        })
    }

    /// Writes the record to `path` atomically and durably (the exit must survive a
    /// crash of the node: berthd reads it after its restart).
    pub fn write(&self, path: &Path) -> std::io::Result<()> {
        berth_durable::write_atomic(path, &self.encode())
    }

    /// Reads the record at `path`: `None` when there is none (the monitor died before
    /// its container) or it does not decode.
    pub fn read(path: &Path) -> Option<ExitRecord> {
        let bytes = std::fs::read(path).ok()?;
        ExitRecord::decode(&bytes).ok()
    }
}

/// The longest control request a monitor reads.
pub const CONTROL_REQUEST_MAX: usize = 64;

/// A request on the control socket, one per connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ControlRequest {
    /// Reopen the CRI log file (after kubelet rotated it).
    ReopenLog,
}

impl ControlRequest {
    /// The request's line.
    pub fn encode(self) -> &'static [u8] {
        match self {
            ControlRequest::ReopenLog => b"reopen\n",
        }
    }

    /// The request a line names, if any.
    pub fn decode(bytes: &[u8]) -> Option<ControlRequest> {
        match std::str::from_utf8(bytes).map(str::trim) {
            Ok("reopen") => Some(ControlRequest::ReopenLog),
            _ => None,
        }
    }
}

/// The monitor's answer on the control socket.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ControlReply {
    /// Done.
    Ok,
    /// Not done, and why.
    Error(String),
}

impl ControlReply {
    /// The reply's line.
    pub fn encode(&self) -> String {
        match self {
            ControlReply::Ok => "ok\n".to_owned(),
            ControlReply::Error(e) => format!("error {}\n", e.replace('\n', " ")),
        }
    }

    /// Decodes a reply; anything but `ok` is an error.
    pub fn decode(text: &str) -> ControlReply {
        match text.trim() {
            "ok" => ControlReply::Ok,
            other => ControlReply::Error(
                other
                    .strip_prefix("error")
                    .map(str::trim)
                    .unwrap_or(other)
                    .to_owned(),
            ),
        }
    }
}

/// Attach frames: `[kind: u8][len: u32 big-endian][payload]`, both ways.
pub mod attach {
    /// Client → monitor: bytes for the container's stdin.
    pub const STDIN: u8 = 0;
    /// Client → monitor: a terminal resize (rows u16 BE, cols u16 BE).
    pub const RESIZE: u8 = 1;
    /// Client → monitor: close the container's stdin.
    pub const CLOSE_STDIN: u8 = 2;
    /// Monitor → client: the container's stdout (or its terminal).
    pub const STDOUT: u8 = 1;
    /// Monitor → client: the container's stderr.
    pub const STDERR: u8 = 2;
    /// The header's length.
    pub const HEADER: usize = 5;
    /// The largest payload either side accepts.
    pub const MAX_FRAME: usize = 1 << 20;

    /// A frame from the client.
    #[derive(Debug, Clone, PartialEq, Eq)]
    pub enum ClientFrame {
        /// Bytes for stdin.
        Stdin(Vec<u8>),
        /// The terminal's new size.
        Resize {
            /// Rows.
            rows: u16,
            /// Columns.
            cols: u16,
        },
        /// Close stdin.
        CloseStdin,
    }

    impl ClientFrame {
        /// The frame's bytes.
        pub fn encode(&self) -> Vec<u8> {
            match self {
                ClientFrame::Stdin(b) => encode(STDIN, b),
                ClientFrame::Resize { rows, cols } => {
                    let mut p = [0u8; 4];
                    p[..2].copy_from_slice(&rows.to_be_bytes());
                    p[2..].copy_from_slice(&cols.to_be_bytes());
                    encode(RESIZE, &p)
                }
                ClientFrame::CloseStdin => encode(CLOSE_STDIN, &[]),
            }
        }

        /// The frame of a kind and payload; `None` for one this version does not know
        /// (ignored, so that a newer client can add kinds).
        pub fn from_parts(kind: u8, payload: Vec<u8>) -> Option<ClientFrame> {
            match kind {
                STDIN => Some(ClientFrame::Stdin(payload)),
                RESIZE if payload.len() == 4 => Some(ClientFrame::Resize {
                    rows: u16::from_be_bytes([payload[0], payload[1]]),
                    cols: u16::from_be_bytes([payload[2], payload[3]]),
                }),
                CLOSE_STDIN => Some(ClientFrame::CloseStdin),
                _ => None,
            }
        }
    }

    /// A frame of `kind` around `payload` (payloads are at most [`MAX_FRAME`] long).
    pub fn encode(kind: u8, payload: &[u8]) -> Vec<u8> {
        let mut f = Vec::with_capacity(payload.len() + HEADER);
        f.push(kind);
        f.extend_from_slice(
            &u32::try_from(payload.len())
                .unwrap_or(u32::MAX)
                .to_be_bytes(),
        );
        f.extend_from_slice(payload);
        f
    }

    /// The kind and payload length a header announces; `None` when the length is over
    /// [`MAX_FRAME`] (the peer is broken: drop it rather than buffer gigabytes).
    pub fn decode_header(head: [u8; HEADER]) -> Option<(u8, usize)> {
        let len = usize::try_from(u32::from_be_bytes([head[1], head[2], head[3], head[4]]))
            .ok()
            .filter(|l| *l <= MAX_FRAME)?;
        Some((head[0], len))
    }

    /// Takes every complete frame off the front of `buf`. `Err` when a frame is over
    /// [`MAX_FRAME`].
    pub fn split_frames(buf: &mut Vec<u8>) -> Result<Vec<(u8, Vec<u8>)>, usize> {
        let mut frames = Vec::new();
        let mut at = 0;
        while buf.len() - at >= HEADER {
            let mut head = [0u8; HEADER];
            head.copy_from_slice(&buf[at..at + HEADER]);
            let Some((kind, len)) = decode_header(head) else {
                return Err(u32::from_be_bytes([head[1], head[2], head[3], head[4]]) as usize);
            };
            if buf.len() - at - HEADER < len {
                break;
            }
            frames.push((kind, buf[at + HEADER..at + HEADER + len].to_vec()));
            at += HEADER + len;
        }
        buf.drain(..at);
        Ok(frames)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    // Golden messages of the previous release's monitor (main before protocol
    // versions), byte for byte as it wrote them: an upgraded berthd must read them.
    const OLD_CREATED: &str = r#"{"pid":4242}"#;
    const OLD_SPEC_FAULT: &str = r#"{"error":"container init failed at working directory: /nope (ENOENT)","errno":"ENOENT","spec_fault":true,"step":"working directory"}"#;
    const OLD_RUNC_MISSING_EXE: &str = r#"{"error":"/usr/bin/runc create failed (exit status: 1): runc create failed: unable to start container process: exec: \"nope\": executable file not found in $PATH"}"#;
    const OLD_OUT_OF_FDS: &str =
        r#"{"error":"creating the cgroup: Too many open files (os error 24)"}"#;
    const OLD_INTERNAL: &str = r#"{"error":"pivot_root: Invalid argument (os error 22)"}"#;
    const OLD_EXIT: &str = r#"{"exit_code":137,"signal":9,"exited_at":"2026-11-29T07:00:00.123456789Z","oom_killed":true}"#;

    #[test]
    fn reports_of_the_previous_release_are_understood() {
        assert_eq!(
            CreateReport::decode(OLD_CREATED).expect("created"),
            (LEGACY_VERSION, CreateReport::Created { pid: 4242 })
        );
        let kind = |line| match CreateReport::decode(line).expect("decodes") {
            (LEGACY_VERSION, CreateReport::Failed(e)) => e.kind,
            other => panic!("{line}: {other:?}"),
        };
        assert_eq!(kind(OLD_SPEC_FAULT), ErrorKind::SpecFault);
        assert_eq!(kind(OLD_RUNC_MISSING_EXE), ErrorKind::SpecFault);
        assert_eq!(kind(OLD_OUT_OF_FDS), ErrorKind::ResourceExhausted);
        assert_eq!(kind(OLD_INTERNAL), ErrorKind::Internal);
        let (_, CreateReport::Failed(e)) = CreateReport::decode(OLD_SPEC_FAULT).expect("x") else {
            panic!("not a failure");
        };
        assert_eq!(e.step.as_deref(), Some("working directory"));
        assert_eq!(e.errno.as_deref(), Some("ENOENT"));
    }

    #[test]
    fn an_exit_record_of_the_previous_release_is_read_after_upgrade() {
        let r = ExitRecord::decode(OLD_EXIT.as_bytes()).expect("old record");
        assert_eq!(
            r,
            ExitRecord {
                exit_code: 137,
                signal: Some(9),
                exited_at_ns: 1_795_935_600_123_456_789,
                oom_killed: true,
            }
        );
        assert_eq!(r.status_code(), 137);
    }

    #[test]
    fn new_messages_round_trip_and_carry_the_version() {
        for report in [
            CreateReport::Created { pid: 7 },
            CreateReport::Failed(MonitorError {
                kind: ErrorKind::ResourceExhausted,
                message: "pipe: Too many open files".into(),
                step: None,
                errno: Some("EMFILE".into()),
            }),
        ] {
            let line = report.encode();
            assert!(!line.contains('\n'), "{line}");
            assert_eq!(
                CreateReport::decode(&line).expect("decodes"),
                (PROTOCOL_VERSION, report)
            );
        }
        let r = ExitRecord {
            exit_code: 0,
            signal: Some(15),
            exited_at_ns: 1_795_849_200_000_000_005,
            oom_killed: false,
        };
        assert_eq!(ExitRecord::decode(&r.encode()).expect("decodes"), r);
        assert_eq!(r.status_code(), 143);
    }

    #[test]
    fn new_messages_keep_what_the_previous_release_reads() {
        // A berthd rolled back one release reads `error` + `spec_fault` and the RFC
        // 3339 `exited_at`.
        let failed = CreateReport::Failed(MonitorError {
            kind: ErrorKind::SpecFault,
            message: "no /bin/nope".into(),
            step: Some("find executable".into()),
            errno: Some("ENOENT".into()),
        });
        let v: serde_json::Value = serde_json::from_str(&failed.encode()).expect("json");
        assert_eq!(v["error"], "no /bin/nope");
        assert_eq!(v["spec_fault"], true);
        let v: serde_json::Value =
            serde_json::from_str(&CreateReport::Created { pid: 9 }.encode()).expect("json");
        assert_eq!(v["pid"], 9);
        let r = ExitRecord {
            exit_code: 1,
            signal: None,
            exited_at_ns: 1_795_935_600_123_456_789,
            oom_killed: false,
        };
        let v: serde_json::Value = serde_json::from_slice(&r.encode()).expect("json");
        assert_eq!(v["exited_at"], "2026-11-29T07:00:00.123456789Z");
    }

    #[test]
    fn reports_without_a_usable_pid_or_error_are_refused() {
        for bad in [
            r#"{"pid":0}"#,
            r#"{"pid":-1}"#,
            r#"{"pid":99999999999}"#,
            r#"{"version":2}"#,
            "not json",
        ] {
            assert!(CreateReport::decode(bad).is_err(), "{bad}");
        }
        assert!(ExitRecord::decode(br#"{"exit_code":0}"#).is_err());
        assert!(ExitRecord::decode(br#"{"exit_code":0,"exited_at":"yesterday"}"#).is_err());
    }

    #[test]
    fn control_lines_are_those_of_the_previous_release() {
        assert_eq!(ControlRequest::ReopenLog.encode(), b"reopen\n");
        assert_eq!(
            ControlRequest::decode(b"reopen\n"),
            Some(ControlRequest::ReopenLog)
        );
        assert_eq!(ControlRequest::decode(b"reboot\n"), None);
        assert_eq!(ControlReply::Ok.encode(), "ok\n");
        assert_eq!(ControlReply::decode("ok\n"), ControlReply::Ok);
        let e = ControlReply::Error("disk\nfull".into()).encode();
        assert_eq!(e, "error disk full\n");
        assert_eq!(
            ControlReply::decode(&e),
            ControlReply::Error("disk full".into())
        );
    }

    #[test]
    fn attach_frames_split_and_refuse_oversized_ones() {
        use attach::*;
        let mut buf = ClientFrame::Stdin(b"hi".to_vec()).encode();
        buf.extend(ClientFrame::Resize { rows: 24, cols: 80 }.encode());
        buf.extend(&ClientFrame::CloseStdin.encode()[..3]);
        let frames = split_frames(&mut buf).expect("frames");
        let frames: Vec<_> = frames
            .into_iter()
            .filter_map(|(k, p)| ClientFrame::from_parts(k, p))
            .collect();
        assert_eq!(
            frames,
            [
                ClientFrame::Stdin(b"hi".to_vec()),
                ClientFrame::Resize { rows: 24, cols: 80 }
            ]
        );
        assert_eq!(buf.len(), 3, "the partial frame waits");
        buf.extend(&ClientFrame::CloseStdin.encode()[3..]);
        assert_eq!(
            split_frames(&mut buf).expect("rest"),
            [(CLOSE_STDIN, vec![])]
        );
        let mut huge = vec![STDIN];
        huge.extend_from_slice(&u32::MAX.to_be_bytes());
        assert!(split_frames(&mut huge).is_err());
        assert_eq!(decode_header([STDOUT, 0, 0, 0, 3]), Some((STDOUT, 3)));
    }
}
