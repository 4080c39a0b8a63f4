//! Prefixed log lines: `gateway      | <what the gateway said>`.
//!
//! Children's output and mmctl's own messages share one stdout, one whole line at a
//! time, with each service's name in its own colour when stdout is a terminal.

use std::io::{IsTerminal, Write};

/// Writes prefixed lines to stdout.
#[derive(Debug, Clone, Copy)]
pub struct Output {
    color: bool,
}

/// Width of the name column.
const NAME_WIDTH: usize = 12;

impl Output {
    pub fn new() -> Self {
        Self { color: std::io::stdout().is_terminal() && std::env::var_os("NO_COLOR").is_none() }
    }

    /// One line from service `name`.
    pub fn line(&self, name: &str, text: &str) {
        let prefix = if self.color {
            format!("\x1b[{}m{name:<NAME_WIDTH$}\x1b[0m", colour_of(name))
        } else {
            format!("{name:<NAME_WIDTH$}")
        };
        let mut out = std::io::stdout().lock();
        // A closed stdout (mmctl piped into `head`) must not stop the supervisor.
        let _ = writeln!(out, "{prefix} | {text}");
    }

    /// One of mmctl's own messages.
    pub fn say(&self, text: &str) {
        self.line("mmctl", text);
    }
}

/// A stable ANSI colour per name.
fn colour_of(name: &str) -> u8 {
    const COLOURS: [u8; 6] = [36, 32, 33, 35, 34, 91];
    let hash = name.bytes().fold(0usize, |acc, byte| acc.wrapping_mul(31).wrapping_add(usize::from(byte)));
    if name == "mmctl" { 1 } else { COLOURS[hash % COLOURS.len()] }
}
