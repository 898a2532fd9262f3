//! Real client tools (crictl, critest, grpcurl) built by
//! `integration/scripts/install-deps.sh`, and a runner with a timeout.

use std::ffi::OsStr;
use std::path::PathBuf;
use std::process::Output;
use std::time::Duration;

use anyhow::{Context, bail};

/// Where install-deps.sh puts the Go tools unless `BERTH_TOOLS_DIR` says otherwise.
pub const DEFAULT_TOOLS_DIR: &str = "/var/cache/berth/tools";

/// The path of tool `name`: `$BERTH_TOOLS_DIR/bin`, then `PATH`. A missing tool is
/// an error telling how to install it, not a skipped test.
pub fn tool(name: &str) -> anyhow::Result<PathBuf> {
    let dir = std::env::var_os("BERTH_TOOLS_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(DEFAULT_TOOLS_DIR));
    let candidate = dir.join("bin").join(name);
    if candidate.is_file() {
        return Ok(candidate);
    }
    if let Some(path) = std::env::var_os("PATH") {
        for d in std::env::split_paths(&path) {
            let p = d.join(name);
            if p.is_file() {
                return Ok(p);
            }
        }
    }
    bail!(
        "{name} not found in {} or PATH; run integration/scripts/install-deps.sh",
        candidate.display()
    )
}

/// Output of a finished tool run, with text helpers.
#[derive(Debug)]
pub struct ToolOutput {
    /// The command line, for messages.
    pub command: String,
    /// Raw output.
    pub output: Output,
}

impl ToolOutput {
    /// Standard output as text.
    pub fn stdout(&self) -> String {
        String::from_utf8_lossy(&self.output.stdout).into_owned()
    }

    /// Standard error as text.
    pub fn stderr(&self) -> String {
        String::from_utf8_lossy(&self.output.stderr).into_owned()
    }

    /// Fails with both streams shown unless the tool exited 0.
    pub fn success(self) -> anyhow::Result<Self> {
        if !self.output.status.success() {
            bail!(
                "`{}` failed ({}):\n--- stdout ---\n{}\n--- stderr ---\n{}",
                self.command,
                self.output.status,
                self.stdout(),
                self.stderr()
            );
        }
        Ok(self)
    }
}

/// Runs `program args...`, killing it after `timeout`.
pub async fn run<I, S>(program: &OsStr, args: I, timeout: Duration) -> anyhow::Result<ToolOutput>
where
    I: IntoIterator<Item = S>,
    S: AsRef<OsStr>,
{
    let args: Vec<std::ffi::OsString> = args.into_iter().map(|a| a.as_ref().to_owned()).collect();
    let command = std::iter::once(program.to_string_lossy().into_owned())
        .chain(args.iter().map(|a| a.to_string_lossy().into_owned()))
        .collect::<Vec<_>>()
        .join(" ");
    let child = tokio::process::Command::new(program)
        .args(&args)
        .stdin(std::process::Stdio::null())
        .kill_on_drop(true)
        .output();
    let output = tokio::time::timeout(timeout, child)
        .await
        .with_context(|| format!("`{command}` did not finish within {timeout:?}"))?
        .with_context(|| format!("running `{command}`"))?;
    Ok(ToolOutput { command, output })
}

/// Runs crictl against a daemon's endpoint (runtime and image service), with no
/// crictl config file involved.
pub async fn crictl(endpoint: &str, args: &[&str]) -> anyhow::Result<ToolOutput> {
    let crictl = tool("crictl")?;
    run(
        crictl.as_os_str(),
        crictl_args(endpoint, args),
        Duration::from_secs(60),
    )
    .await
}

/// crictl's arguments for `endpoint` (runtime and image service, 20 s per RPC), then
/// `args`.
fn crictl_args<'a>(endpoint: &'a str, args: &[&'a str]) -> Vec<&'a str> {
    let mut full = vec![
        "--runtime-endpoint",
        endpoint,
        "--image-endpoint",
        endpoint,
        "--timeout",
        "20s",
    ];
    full.extend_from_slice(args);
    full
}

/// What a critest run printed: the tool's output, its stdout, and ginkgo's summary line
/// (`Ran N of M Specs ... | N Passed | N Failed | ...`; "no ginkgo summary" when none).
#[derive(Debug)]
pub struct CritestRun {
    pub out: ToolOutput,
    pub text: String,
    pub summary: String,
}

/// Runs critest against a daemon's endpoint (runtime and image service), without
/// colour, with `args` (a `--ginkgo.focus=`, `-benchmark`...) within `timeout`.
pub async fn critest(
    endpoint: &str,
    args: &[&str],
    timeout: Duration,
) -> anyhow::Result<CritestRun> {
    let critest = tool("critest")?;
    let mut full = vec![
        "--runtime-endpoint",
        endpoint,
        "--image-endpoint",
        endpoint,
        "--ginkgo.no-color",
    ];
    full.extend_from_slice(args);
    let out = run(critest.as_os_str(), &full, timeout).await?;
    let text = out.stdout();
    let summary = text
        .lines()
        .find(|l| l.contains(" Passed | "))
        .unwrap_or("no ginkgo summary")
        .to_owned();
    Ok(CritestRun { out, text, summary })
}

/// [`crictl`] expected to succeed: its stdout; panics with the command line, its exit
/// status and stderr when it fails (for tests).
pub async fn crictl_ok(endpoint: &str, args: &[&str]) -> String {
    crictl(endpoint, args)
        .await
        .expect("crictl")
        .success()
        .unwrap_or_else(|e| panic!("{e}"))
        .stdout()
}

/// Like [`crictl`], with `stdin` piped in and then closed (`attach -i`, `exec -i`).
pub async fn crictl_with_stdin(
    endpoint: &str,
    args: &[&str],
    stdin: &[u8],
) -> anyhow::Result<ToolOutput> {
    use tokio::io::AsyncWriteExt;
    let crictl = tool("crictl")?;
    let full = crictl_args(endpoint, args);
    let command = std::iter::once(crictl.display().to_string())
        .chain(full.iter().map(|a| (*a).to_owned()))
        .collect::<Vec<_>>()
        .join(" ");
    let mut child = tokio::process::Command::new(&crictl)
        .args(&full)
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .with_context(|| format!("running `{command}`"))?;
    let mut input = child.stdin.take().context("crictl stdin")?;
    input
        .write_all(stdin)
        .await
        .context("writing crictl's stdin")?;
    drop(input);
    let timeout = Duration::from_secs(60);
    let output = tokio::time::timeout(timeout, child.wait_with_output())
        .await
        .with_context(|| format!("`{command}` did not finish within {timeout:?}"))?
        .with_context(|| format!("running `{command}`"))?;
    Ok(ToolOutput { command, output })
}
