//! The SPDY/3.1 frame decoder behind `kubectl exec/attach/port-forward`, fed bytes as a
//! peer would send them, in chunks of varying size: no panic, every call either makes
//! progress or asks for more bytes (no busy loop), and every frame it accepts
//! re-encodes to bytes that decode to the same frame.
#![no_main]

use berth_stream::spdy::{Frame, FrameDecoder, FrameEncoder};
use bytes::BytesMut;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|input: &[u8]| {
    let Some((&chunk, bytes)) = input.split_first() else {
        return;
    };
    let chunk = usize::from(chunk).max(1);
    // Small limits so that the size checks are reachable.
    let mut decoder = FrameDecoder::new(64 << 10, 64 << 10);
    let mut buf = BytesMut::new();
    let mut frames = Vec::new();
    'feed: for piece in bytes.chunks(chunk) {
        buf.extend_from_slice(piece);
        loop {
            let before = buf.len();
            match decoder.decode(&mut buf) {
                Ok(Some(frame)) => {
                    assert!(buf.len() < before, "a frame was decoded from no bytes");
                    frames.push(frame);
                }
                Ok(None) => {
                    assert_eq!(buf.len(), before, "bytes consumed without a frame");
                    break;
                }
                // The connection is dropped after an error.
                Err(_) => break 'feed,
            }
        }
    }
    let mut encoder = FrameEncoder::new().expect("encoder");
    let mut decoder = FrameDecoder::new(1 << 20, 1 << 20);
    for frame in frames {
        if matches!(frame, Frame::Unknown { .. }) {
            continue;
        }
        let mut wire = BytesMut::new();
        encoder
            .encode(&frame, &mut wire)
            .unwrap_or_else(|e| panic!("decoded frame {frame:?} does not encode: {e}"));
        let back = decoder
            .decode(&mut wire)
            .unwrap_or_else(|e| panic!("re-encoded {frame:?} does not decode: {e}"))
            .expect("a whole frame");
        assert_eq!(frame, back);
        assert!(wire.is_empty(), "trailing bytes after re-encoded {frame:?}");
    }
});
