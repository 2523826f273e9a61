//! A progress line for the commands that read a whole log: rewritten in
//! place on a terminal, never written to a pipe or a file (whose reader
//! wants the result lines alone).

use std::io::{IsTerminal, Write};
use std::time::{Duration, Instant};

/// How often the line is rewritten at most.
const EVERY: Duration = Duration::from_millis(200);

/// One line on stderr, cleared when dropped.
pub struct Progress<W: Write = std::io::Stderr> {
    /// `None` off a terminal.
    out: Option<W>,
    what: &'static str,
    shown: Option<Instant>,
}

impl Progress {
    /// A line saying `what` is done (`"checked"`, `"pulled"`), on stderr if
    /// it is a terminal.
    pub fn on_stderr(what: &'static str) -> Self {
        let stderr = std::io::stderr();
        let out = stderr.is_terminal().then_some(stderr);
        Self::new(out, what)
    }
}

impl<W: Write> Progress<W> {
    fn new(out: Option<W>, what: &'static str) -> Self {
        Self {
            out,
            what,
            shown: None,
        }
    }

    /// Shows `done` records of `of` (of an unknown number when `None`), at
    /// most every [`EVERY`].
    pub fn records(&mut self, done: u64, of: Option<u64>) {
        let Some(out) = &mut self.out else {
            return;
        };
        let now = Instant::now();
        if self.shown.is_some_and(|shown| now - shown < EVERY) {
            return;
        }
        self.shown = Some(now);
        let line = match of {
            Some(of) if of > 0 => format!(
                "{} {} of {} records ({} %)",
                self.what,
                thousands(done),
                thousands(of),
                done.min(of) * 100 / of
            ),
            _ => format!("{} {} records", self.what, thousands(done)),
        };
        // A terminal gone is no reason to stop the work.
        let _ = write!(out, "\r\x1b[2K{line}");
        let _ = out.flush();
    }
}

impl<W: Write> Drop for Progress<W> {
    /// Clears the line, so that what is printed next starts clean.
    fn drop(&mut self) {
        if let (Some(out), Some(_)) = (&mut self.out, self.shown) {
            let _ = write!(out, "\r\x1b[2K");
            let _ = out.flush();
        }
    }
}

/// `1234567` as `1,234,567`.
fn thousands(n: u64) -> String {
    let digits = n.to_string();
    let mut out = String::with_capacity(digits.len() + digits.len() / 3);
    for (position, digit) in digits.chars().enumerate() {
        if position > 0 && (digits.len() - position).is_multiple_of(3) {
            out.push(',');
        }
        out.push(digit);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_line_is_rewritten_in_place_then_cleared() {
        let mut written = Vec::new();
        {
            let mut progress = Progress::new(Some(&mut written), "checked");
            progress.records(1_234_567, Some(10_400_000));
            // Within EVERY of the first: not shown.
            progress.records(2_000_000, Some(10_400_000));
        }
        assert_eq!(
            String::from_utf8(written).unwrap(),
            "\r\x1b[2Kchecked 1,234,567 of 10,400,000 records (11 %)\r\x1b[2K"
        );
    }

    #[test]
    fn an_unknown_total_is_not_guessed() {
        let mut written = Vec::new();
        Progress::new(Some(&mut written), "pulled").records(512, None);
        assert_eq!(
            String::from_utf8(written).unwrap(),
            "\r\x1b[2Kpulled 512 records\r\x1b[2K"
        );
    }

    #[test]
    fn thousands_are_grouped() {
        for (n, text) in [
            (0, "0"),
            (999, "999"),
            (1_000, "1,000"),
            (10_400_000, "10,400,000"),
        ] {
            assert_eq!(thousands(n), text);
        }
    }
}
