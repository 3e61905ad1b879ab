//! Human output: tables, colour (only on a terminal) and a progress line for
//! long steps (only on a terminal, on stderr, erased when done).

use std::io::{IsTerminal, Write};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// Whether stdout is a terminal that wants colour (`NO_COLOR` unset).
pub fn colour_stdout() -> bool {
    std::io::stdout().is_terminal() && std::env::var_os("NO_COLOR").is_none()
}

/// Whether stderr is a terminal that wants colour.
pub fn colour_stderr() -> bool {
    std::io::stderr().is_terminal() && std::env::var_os("NO_COLOR").is_none()
}

/// Wraps `text` in an SGR colour when `on`.
pub fn paint(text: &str, sgr: &str, on: bool) -> String {
    if on {
        format!("\x1b[{sgr}m{text}\x1b[0m")
    } else {
        text.to_string()
    }
}

/// The SGR code used for a status word.
pub fn status_sgr(status: &str) -> &'static str {
    match status {
        "Running" => "32",
        "Starting" | "Draining" | "Paused" => "33",
        "Crashed" => "31",
        _ => "2",
    }
}

/// Prints an error line to stderr.
pub fn error_line(msg: &str) {
    let prefix = paint("alcove:", "1;31", colour_stderr());
    eprintln!("{prefix} {msg}");
}

/// A simple left-aligned table; cells may carry colour codes, which are not
/// counted in the column widths.
pub struct Table {
    header: Vec<String>,
    rows: Vec<Vec<(String, Option<&'static str>)>>,
}

impl Table {
    /// A table with these column titles.
    pub fn new(header: &[&str]) -> Table {
        Table { header: header.iter().map(|s| s.to_string()).collect(), rows: Vec::new() }
    }

    /// Adds a row of plain cells.
    pub fn row(&mut self, cells: Vec<String>) {
        self.rows.push(cells.into_iter().map(|c| (c, None)).collect());
    }

    /// Adds a row whose cells may have a colour.
    pub fn row_styled(&mut self, cells: Vec<(String, Option<&'static str>)>) {
        self.rows.push(cells);
    }

    /// Renders the table.
    pub fn render(&self, colour: bool) -> String {
        let cols = self.header.len();
        let mut width = vec![0usize; cols];
        for (i, h) in self.header.iter().enumerate() {
            width[i] = h.chars().count();
        }
        for row in &self.rows {
            for (i, (c, _)) in row.iter().enumerate().take(cols) {
                width[i] = width[i].max(c.chars().count());
            }
        }
        let mut out = String::new();
        let line = |out: &mut String, cells: Vec<(String, Option<&str>)>, bold: bool| {
            let n = cells.len();
            for (i, (c, sgr)) in cells.into_iter().enumerate() {
                let pad = width.get(i).copied().unwrap_or(0).saturating_sub(c.chars().count());
                let text = match (sgr, bold) {
                    (Some(s), _) => paint(&c, s, colour),
                    (None, true) => paint(&c, "1", colour),
                    (None, false) => c,
                };
                out.push_str(&text);
                if i + 1 < n {
                    out.push_str(&" ".repeat(pad + 3));
                }
            }
            out.push('\n');
        };
        line(&mut out, self.header.iter().map(|h| (h.clone(), None)).collect(), true);
        for row in &self.rows {
            line(&mut out, row.clone(), false);
        }
        out
    }
}

/// A one-line progress display on stderr with a spinner, shown only when
/// stderr is a terminal. Dropping it erases the line.
pub struct Progress {
    state: Option<Arc<ProgressState>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

struct ProgressState {
    message: Mutex<String>,
    done: AtomicBool,
}

impl Progress {
    /// Starts showing `message`.
    pub fn start(message: impl Into<String>) -> Progress {
        if !std::io::stderr().is_terminal() {
            return Progress { state: None, thread: None };
        }
        let state = Arc::new(ProgressState { message: Mutex::new(message.into()), done: AtomicBool::new(false) });
        let st = state.clone();
        let thread = std::thread::Builder::new()
            .name("alcove-progress".into())
            .spawn(move || {
                const FRAMES: [&str; 10] = ["⠋", "⠙", "⠹", "⠸", "⠼", "⠴", "⠦", "⠧", "⠇", "⠏"];
                let mut i = 0;
                while !st.done.load(Ordering::Relaxed) {
                    let msg = st.message.lock().map(|m| m.clone()).unwrap_or_default();
                    let mut err = std::io::stderr().lock();
                    let _ = write!(err, "\r\x1b[2K{} {msg}", paint(FRAMES[i % FRAMES.len()], "36", true));
                    let _ = err.flush();
                    drop(err);
                    i += 1;
                    std::thread::sleep(Duration::from_millis(80));
                }
                let mut err = std::io::stderr().lock();
                let _ = write!(err, "\r\x1b[2K");
                let _ = err.flush();
            })
            .ok();
        Progress { state: Some(state), thread }
    }

    /// Replaces the message.
    pub fn set(&self, message: impl Into<String>) {
        if let Some(st) = &self.state {
            if let Ok(mut m) = st.message.lock() {
                *m = message.into();
            }
        }
    }

    /// Erases the line and stops.
    pub fn finish(mut self) {
        self.stop();
    }

    fn stop(&mut self) {
        if let Some(st) = &self.state {
            st.done.store(true, Ordering::Relaxed);
        }
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

impl Drop for Progress {
    fn drop(&mut self) {
        self.stop();
    }
}

/// `1536` → `1.5 KiB`.
pub fn human_bytes(n: u64) -> String {
    const UNITS: [&str; 5] = ["B", "KiB", "MiB", "GiB", "TiB"];
    let mut v = n as f64;
    let mut u = 0;
    while v >= 1024.0 && u + 1 < UNITS.len() {
        v /= 1024.0;
        u += 1;
    }
    if u == 0 {
        format!("{n} B")
    } else {
        format!("{v:.1} {}", UNITS[u])
    }
}

/// A duration in ms as `3s`, `5m10s`, `2h3m`, `4d2h`.
pub fn human_duration_ms(ms: i64) -> String {
    let s = ms.max(0) / 1000;
    match s {
        0..=59 => format!("{s}s"),
        60..=3599 => format!("{}m{}s", s / 60, s % 60),
        3600..=86399 => format!("{}h{}m", s / 3600, (s % 3600) / 60),
        _ => format!("{}d{}h", s / 86400, (s % 86400) / 3600),
    }
}

/// Milliseconds since the epoch, now.
pub fn now_ms() -> i64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_millis() as i64).unwrap_or(0)
}

/// `… ago` for a past timestamp in ms since the epoch.
pub fn ago(ms: i64) -> String {
    format!("{} ago", human_duration_ms(now_ms() - ms))
}

/// An epoch-ms timestamp as UTC `YYYY-MM-DD HH:MM:SS`.
pub fn utc(ms: i64) -> String {
    let secs = ms.div_euclid(1000);
    let days = secs.div_euclid(86400);
    let rem = secs.rem_euclid(86400);
    // Civil-from-days (Howard Hinnant's algorithm).
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let y = yoe + era * 400;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = if m <= 2 { y + 1 } else { y };
    format!("{y:04}-{m:02}-{d:02} {:02}:{:02}:{:02}", rem / 3600, (rem % 3600) / 60, rem % 60)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tables_align_columns_without_counting_colour() {
        let mut t = Table::new(&["NAME", "STATUS"]);
        t.row(vec!["a".into(), "Running".into()]);
        t.row_styled(vec![("longer-name".into(), None), ("Stopped".into(), Some("2"))]);
        let plain = t.render(false);
        assert_eq!(plain, "NAME          STATUS\na             Running\nlonger-name   Stopped\n");
        assert!(t.render(true).contains("\x1b[2mStopped\x1b[0m"));
    }

    #[test]
    fn sizes_durations_and_dates_read_well() {
        assert_eq!(human_bytes(512), "512 B");
        assert_eq!(human_bytes(1536), "1.5 KiB");
        assert_eq!(human_duration_ms(61_000), "1m1s");
        assert_eq!(human_duration_ms(90_061_000), "1d1h");
        assert_eq!(utc(0), "1970-01-01 00:00:00");
        assert_eq!(utc(951_782_400_000), "2000-02-29 00:00:00");
    }
}
