//! What `berthd image import|pull` show while they run. On a terminal one status
//! line rewritten in place (bytes and layers); otherwise (CI logs, `journalctl`,
//! a pipe) a plain line per step worth keeping: the layer count once known and each
//! layer done, never a stream of carriage returns.

use std::io::Write;

use crate::admin::Progress;

/// Renders the progress of one import or pull to `out`.
#[derive(Debug)]
pub struct Renderer<W: Write> {
    out: W,
    /// `importing <file>` or `pulling <ref>`.
    what: String,
    /// The archive's size, for an import (the pull's total comes with its steps).
    archive_bytes: u64,
    tty: bool,
    /// A status line is on screen (terminal) and needs a newline at the end.
    open: bool,
    /// The last step printed as a plain line: (layers done, layers).
    last: Option<(usize, usize)>,
}

fn mib(bytes: u64) -> f64 {
    bytes as f64 / 1_048_576.0
}

impl<W: Write> Renderer<W> {
    /// A renderer writing to `out`; `tty` says whether `out` is a terminal.
    pub fn new(out: W, tty: bool, what: impl Into<String>, archive_bytes: u64) -> Self {
        Self {
            out,
            what: what.into(),
            archive_bytes,
            tty,
            open: false,
            last: None,
        }
    }

    /// Shows one step. Write errors are ignored: progress is a courtesy.
    pub fn show(&mut self, step: Progress) {
        let (done, layers, bytes) = match step {
            Progress::Import(p) => (
                p.layers_done,
                p.layers,
                format!(
                    "{:.1}/{:.1} MiB read",
                    mib(p.read_bytes),
                    mib(self.archive_bytes)
                ),
            ),
            Progress::Pull(p) => (
                p.layers_done,
                p.layers,
                format!(
                    "{:.1}/{:.1} MiB downloaded",
                    mib(p.received_bytes),
                    mib(p.total_bytes)
                ),
            ),
        };
        let verb = match step {
            Progress::Import(_) => "unpacked",
            Progress::Pull(_) => "ready",
        };
        if self.tty {
            let layers = if layers > 0 {
                format!(", layers {verb} {done}/{layers}")
            } else {
                String::new()
            };
            let _ = write!(self.out, "\r\x1b[2K{}: {bytes}{layers}", self.what);
            let _ = self.out.flush();
            self.open = true;
            return;
        }
        // Plain lines: only when the layer count is first known or a layer is done.
        if layers == 0 || self.last == Some((done, layers)) {
            return;
        }
        let line = if self.last.is_none() && done == 0 {
            format!("{}: {layers} layer(s), {bytes}", self.what)
        } else {
            format!("{}: layer {done}/{layers} {verb}, {bytes}", self.what)
        };
        self.last = Some((done, layers));
        let _ = writeln!(self.out, "{line}");
    }

    /// Ends the status line (terminal), so what follows starts on its own line.
    pub fn finish(&mut self) {
        if self.open {
            let _ = writeln!(self.out);
            self.open = false;
        }
        let _ = self.out.flush();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use berth_image::store::{ImportProgress, PullProgress};

    fn import(read_bytes: u64, layers_done: usize, layers: usize) -> Progress {
        Progress::Import(ImportProgress {
            read_bytes,
            layers_done,
            layers,
        })
    }

    fn pull(layers_done: usize, received_bytes: u64) -> Progress {
        Progress::Pull(PullProgress {
            layers_done,
            layers: 2,
            received_bytes,
            total_bytes: 4 << 20,
        })
    }

    fn render(tty: bool, what: &str, steps: &[Progress]) -> String {
        let mut out = Vec::new();
        let mut r = Renderer::new(&mut out, tty, what, 3 << 20);
        for s in steps {
            r.show(*s);
        }
        r.finish();
        String::from_utf8(out).expect("UTF-8")
    }

    #[test]
    fn a_terminal_gets_one_line_rewritten_in_place() {
        let shown = render(
            true,
            "importing a.tar",
            &[
                import(1 << 20, 0, 0),
                import(3 << 20, 0, 2),
                import(3 << 20, 2, 2),
            ],
        );
        assert_eq!(
            shown,
            "\r\x1b[2Kimporting a.tar: 1.0/3.0 MiB read\
             \r\x1b[2Kimporting a.tar: 3.0/3.0 MiB read, layers unpacked 0/2\
             \r\x1b[2Kimporting a.tar: 3.0/3.0 MiB read, layers unpacked 2/2\n"
        );
        assert_eq!(shown.matches('\n').count(), 1, "one line: {shown:?}");
    }

    #[test]
    fn a_log_gets_plain_lines_per_layer_without_control_characters() {
        let shown = render(
            false,
            "importing a.tar",
            &[
                import(1 << 20, 0, 0),
                import(2 << 20, 0, 0),
                import(3 << 20, 0, 2),
                import(3 << 20, 1, 2),
                import(3 << 20, 1, 2),
                import(3 << 20, 2, 2),
            ],
        );
        assert_eq!(
            shown,
            "importing a.tar: 2 layer(s), 3.0/3.0 MiB read\n\
             importing a.tar: layer 1/2 unpacked, 3.0/3.0 MiB read\n\
             importing a.tar: layer 2/2 unpacked, 3.0/3.0 MiB read\n"
        );
        assert!(!shown.contains(['\r', '\x1b']), "{shown:?}");
    }

    #[test]
    fn a_pull_shows_downloaded_bytes_and_ready_layers() {
        let steps = [
            pull(0, 0),
            pull(0, 1 << 20),
            pull(1, 2 << 20),
            pull(2, 4 << 20),
        ];
        let plain = render(false, "pulling x:1", &steps);
        assert_eq!(
            plain,
            "pulling x:1: 2 layer(s), 0.0/4.0 MiB downloaded\n\
             pulling x:1: layer 1/2 ready, 2.0/4.0 MiB downloaded\n\
             pulling x:1: layer 2/2 ready, 4.0/4.0 MiB downloaded\n"
        );
        let tty = render(true, "pulling x:1", &steps);
        assert!(
            tty.ends_with("\r\x1b[2Kpulling x:1: 4.0/4.0 MiB downloaded, layers ready 2/2\n"),
            "{tty:?}"
        );
        assert_eq!(tty.matches("\r\x1b[2K").count(), 4, "{tty:?}");
    }

    #[test]
    fn nothing_shown_leaves_no_stray_newline() {
        assert_eq!(render(true, "importing a.tar", &[]), "");
        assert_eq!(render(false, "importing a.tar", &[import(1, 0, 0)]), "");
    }
}
