//! The CRI container log writer in berth-monitor, fed arbitrary container output in
//! arbitrary chunks from both streams: no panic, every line of the file is a well-formed
//! CRI record (`<RFC3339Nano> <stdout|stderr> <P|F> <msg>`), and the messages, read back
//! per stream, are exactly what the container wrote.
#![no_main]

#[path = "../../runtime-core/src/bin/berth-monitor/crilog.rs"]
#[allow(dead_code)]
mod crilog;

use crilog::{CriLog, Stream};
use libfuzzer_sys::arbitrary::{self, Arbitrary};
use libfuzzer_sys::fuzz_target;

#[derive(Debug, Arbitrary)]
struct Chunk {
    stderr: bool,
    bytes: Vec<u8>,
    reopen: bool,
}

fuzz_target!(|chunks: Vec<Chunk>| {
    let dir = tempfile::tempdir().expect("temp dir");
    let path = dir.path().join("0.log");
    let mut log = CriLog::open(&path).expect("open log");
    let mut want = [Vec::new(), Vec::new()];
    for c in &chunks {
        let stream = if c.stderr {
            Stream::Stderr
        } else {
            Stream::Stdout
        };
        log.write_chunk(stream, &c.bytes).expect("write chunk");
        want[usize::from(c.stderr)].extend_from_slice(&c.bytes);
        if c.reopen {
            log.reopen().expect("reopen");
        }
    }
    let text = std::fs::read(&path).expect("read log");
    let mut got = [Vec::new(), Vec::new()];
    for line in text.split_inclusive(|b| *b == b'\n') {
        let line = line
            .strip_suffix(b"\n")
            .expect("every record ends in a newline");
        let mut parts = line.splitn(4, |b| *b == b' ');
        let time = parts.next().expect("time");
        let stream = parts.next().expect("stream");
        let tag = parts.next().expect("tag");
        let msg = parts.next().expect("message (maybe empty)");
        assert!(
            time.len() >= 20 && time.ends_with(b"Z") && time[10] == b'T',
            "bad timestamp {:?}",
            String::from_utf8_lossy(time)
        );
        let idx = match stream {
            b"stdout" => 0,
            b"stderr" => 1,
            other => panic!("bad stream {:?}", String::from_utf8_lossy(other)),
        };
        got[idx].extend_from_slice(msg);
        match tag {
            b"F" => got[idx].push(b'\n'),
            b"P" => {}
            other => panic!("bad tag {:?}", String::from_utf8_lossy(other)),
        }
    }
    assert_eq!(got, want, "log content differs from what was written");
});
