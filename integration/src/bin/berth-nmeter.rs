//! `nmeter` for the node e2e suite's busybox image, whose Debian busybox is built
//! without that applet. The suite's container-lifecycle specs stamp every log line with
//! `date -u +%FT$(nmeter -d0 '%3t' | head -n1)Z` (busybox `date` has no `%N`; nmeter's
//! `%t` is the only millisecond clock in a busybox image). This program does the part
//! of nmeter those specs use: `-d MSEC` between lines and a format of literal text and
//! `%[N]t` (the time of day, `HH:MM:SS` with N fractional digits, N ≤ 6), printed until
//! the reader goes away. Unlike busybox it prints UTC, which is what nmeter prints in a
//! container without /etc/localtime. Any other nmeter directive is refused.

use std::io::Write as _;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

enum Piece {
    Text(String),
    Time(u32),
}

fn parse(format: &str) -> Result<Vec<Piece>, String> {
    let mut pieces = Vec::new();
    let mut text = String::new();
    let mut chars = format.chars().peekable();
    while let Some(c) = chars.next() {
        if c != '%' {
            text.push(c);
            continue;
        }
        let mut digits = String::new();
        while let Some(d) = chars.peek().filter(|d| d.is_ascii_digit()) {
            digits.push(*d);
            chars.next();
        }
        match chars.next() {
            Some('%') if digits.is_empty() => text.push('%'),
            Some('t') => {
                let prec = if digits.is_empty() {
                    0
                } else {
                    digits
                        .parse()
                        .map_err(|_| format!("bad precision {digits:?}"))?
                };
                if prec > 6 {
                    return Err(format!("%{prec}t: at most 6 fractional digits"));
                }
                if !text.is_empty() {
                    pieces.push(Piece::Text(std::mem::take(&mut text)));
                }
                pieces.push(Piece::Time(prec));
            }
            other => {
                return Err(format!(
                    "%{digits}{}: only %t (the time) is supported by this nmeter",
                    other.map(String::from).unwrap_or_default()
                ));
            }
        }
    }
    if !text.is_empty() {
        pieces.push(Piece::Text(text));
    }
    Ok(pieces)
}

fn render(pieces: &[Piece], now: Duration) -> String {
    let mut line = String::new();
    for p in pieces {
        match p {
            Piece::Text(t) => line.push_str(t),
            Piece::Time(prec) => {
                let s = now.as_secs() % 86_400;
                line.push_str(&format!("{:02}:{:02}:{:02}", s / 3600, s / 60 % 60, s % 60));
                if *prec > 0 {
                    let frac = now.subsec_micros() / 10u32.pow(6 - *prec);
                    line.push_str(&format!(".{frac:0width$}", width = *prec as usize));
                }
            }
        }
    }
    line.push('\n');
    line
}

fn main() {
    let mut delay_ms: u64 = 1000;
    let mut format = None;
    let mut args = std::env::args().skip(1);
    while let Some(a) = args.next() {
        if let Some(d) = a.strip_prefix("-d") {
            let d = if d.is_empty() {
                args.next().unwrap_or_default()
            } else {
                d.to_owned()
            };
            // nmeter takes -1 for "no delay" too.
            delay_ms = d
                .parse::<i64>()
                .map(|v| u64::try_from(v).unwrap_or(0))
                .unwrap_or_else(|_| {
                    eprintln!("nmeter: bad delay {d:?}");
                    std::process::exit(1)
                });
        } else if format.is_none() && !a.starts_with('-') {
            format = Some(a);
        } else {
            eprintln!("nmeter: unsupported argument {a:?} (usage: nmeter [-d MSEC] FORMAT)");
            std::process::exit(1);
        }
    }
    let Some(format) = format else {
        eprintln!("usage: nmeter [-d MSEC] FORMAT");
        std::process::exit(1)
    };
    let pieces = parse(&format).unwrap_or_else(|e| {
        eprintln!("nmeter: {e}");
        std::process::exit(1)
    });
    let mut out = std::io::stdout().lock();
    loop {
        let now = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap_or_default();
        // The reader (`head -n1`) going away ends the program quietly, as nmeter.
        if out
            .write_all(render(&pieces, now).as_bytes())
            .and_then(|()| out.flush())
            .is_err()
        {
            return;
        }
        std::thread::sleep(Duration::from_millis(delay_ms.max(1)));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn time_of_day_with_fractional_digits() {
        // 2026-12-07T09:05:07.123456Z
        let t = Duration::new(1_796_634_000 + 307, 123_456_789);
        let p = parse("%3t").unwrap();
        assert_eq!(render(&p, t), "09:05:07.123\n");
        assert_eq!(render(&parse("at %t!").unwrap(), t), "at 09:05:07!\n");
        assert_eq!(render(&parse("%6t %%").unwrap(), t), "09:05:07.123456 %\n");
        assert!(parse("%c").is_err(), "cpu meters are not implemented");
        assert!(parse("%7t").is_err());
    }
}
