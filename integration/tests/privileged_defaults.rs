//! `berthd` with no arguments at all, as a newcomer runs it as root: built-in
//! defaults, /run/berth/berth.sock, /var/lib/berth. The host's /run, /var/lib and
//! /etc/berth are shadowed by tmpfs in a private mount (and PID) namespace, so the
//! test exercises the real default paths without touching the host's.

use std::time::Duration;

use berth_integration::TestDaemon;
use berth_integration::tools;

#[tokio::test]
async fn berthd_with_no_arguments_serves_the_default_socket() {
    let berthd = TestDaemon::binary().expect("berthd binary");
    let crictl = tools::tool("crictl").expect("crictl");
    let dir = tempfile::tempdir().expect("tempdir");
    let log = dir.path().join("berthd.log");
    let script = format!(
        r#"set -eu
mount -t tmpfs tmpfs /run
mount -t tmpfs tmpfs /var/lib
if [ -d /etc/berth ]; then mount -t tmpfs tmpfs /etc/berth; fi
{berthd} 2>{log} &
pid=$!
i=0
while [ ! -S /run/berth/berth.sock ] && [ $i -lt 200 ]; do sleep 0.05; i=$((i+1)); done
{crictl} --runtime-endpoint unix:///run/berth/berth.sock version
echo "mode=$(stat -c %a /run/berth/berth.sock)"
test -d /var/lib/berth/images && echo "image-store=ok"
kill -TERM $pid
wait $pid && echo "exit=0"
"#,
        berthd = berthd.display(),
        crictl = crictl.display(),
        log = log.display(),
    );
    let out = tools::run(
        "unshare".as_ref(),
        [
            "--mount",
            "--pid",
            "--fork",
            "--kill-child",
            "--mount-proc",
            "--propagation",
            "private",
            "sh",
            "-c",
            &script,
        ],
        Duration::from_secs(60),
    )
    .await
    .expect("unshare");
    let stdout = out.stdout();
    let daemon_log = std::fs::read_to_string(&log).unwrap_or_default();
    assert!(
        out.output.status.success(),
        "{}\n{}\nberthd log:\n{daemon_log}",
        stdout,
        out.stderr()
    );
    assert!(stdout.contains("RuntimeName:  berth"), "{stdout}");
    assert!(stdout.contains("mode=660"), "{stdout}");
    assert!(stdout.contains("image-store=ok"), "{stdout}");
    assert!(stdout.contains("exit=0"), "{stdout}");
    assert!(daemon_log.contains("/run/berth/berth.sock"), "{daemon_log}");
}
