//! `nc` for the node e2e suite's agnhost image. Upstream's agnhost (alpine) has a
//! netcat with UDP; Debian's static busybox `nc` has no `-u`, and the networking specs'
//! node-to-pod UDP check runs `echo hostName | nc -w 1 -u POD_IP PORT` in that image.
//! This program does that one thing — `-u` with an optional `-w SECS`: send what stdin
//! holds as one datagram, print every reply until nothing arrives for SECS seconds
//! (default 1) — and hands every other command line to busybox's `nc` unchanged.

use std::io::{Read as _, Write as _};
use std::net::{ToSocketAddrs as _, UdpSocket};
use std::os::unix::process::CommandExt as _;
use std::time::Duration;

/// Busybox's own nc, which does TCP.
const BUSYBOX_NC: &str = "/usr/bin/nc";

fn fail(msg: &str) -> ! {
    eprintln!("nc: {msg}");
    std::process::exit(1)
}

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    if !args.iter().any(|a| a == "-u") {
        let err = std::process::Command::new(BUSYBOX_NC).args(&args).exec();
        fail(&format!("exec {BUSYBOX_NC}: {err}"));
    }
    let mut wait = 1u64;
    let mut rest = Vec::new();
    let mut it = args.iter();
    while let Some(a) = it.next() {
        match a.as_str() {
            "-u" => {}
            "-w" => {
                let v = it.next().unwrap_or_else(|| fail("-w needs a value"));
                wait = v.parse().unwrap_or_else(|_| fail("-w: not a number"));
            }
            w if w.starts_with("-w") => {
                wait = w[2..].parse().unwrap_or_else(|_| fail("-w: not a number"));
            }
            o if o.starts_with('-') => fail(&format!("{o}: only -u and -w are supported with -u")),
            _ => rest.push(a.clone()),
        }
    }
    let [host, port] = rest.as_slice() else {
        fail("usage: nc -u [-w SECS] HOST PORT")
    };
    let port: u16 = port.parse().unwrap_or_else(|_| fail("bad port"));
    let addr = (host.as_str(), port)
        .to_socket_addrs()
        .ok()
        .and_then(|mut a| a.next())
        .unwrap_or_else(|| fail(&format!("cannot resolve {host}")));
    let local = if addr.is_ipv4() {
        "0.0.0.0:0"
    } else {
        "[::]:0"
    };
    let sock = UdpSocket::bind(local).unwrap_or_else(|e| fail(&format!("bind: {e}")));
    sock.connect(addr)
        .unwrap_or_else(|e| fail(&format!("connect {addr}: {e}")));
    let mut input = Vec::new();
    std::io::stdin()
        .read_to_end(&mut input)
        .unwrap_or_else(|e| fail(&format!("reading stdin: {e}")));
    sock.send(&input)
        .unwrap_or_else(|e| fail(&format!("send: {e}")));
    sock.set_read_timeout(Some(Duration::from_secs(wait.max(1))))
        .unwrap_or_else(|e| fail(&format!("timeout: {e}")));
    let mut buf = vec![0u8; 65_536];
    let mut out = std::io::stdout().lock();
    // Until the peer is quiet for `wait` seconds (or refuses: ICMP unreachable).
    while let Ok(n) = sock.recv(&mut buf) {
        if out.write_all(&buf[..n]).and_then(|()| out.flush()).is_err() {
            return;
        }
    }
}
