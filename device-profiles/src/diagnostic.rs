//! Messages about a profile file, each pointing at a file, line and column.

use std::fmt;
use std::path::{Path, PathBuf};

/// How serious a diagnostic is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Severity {
    /// Likely a mistake, but the profile still loads.
    Warning,
    /// The profile is refused.
    Error,
}

/// One problem found in a profile, printed as `file:line:column: error: message`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Diagnostic {
    /// The profile file.
    pub file: PathBuf,
    /// 1-based line.
    pub line: usize,
    /// 1-based column, in characters.
    pub column: usize,
    /// Error or warning.
    pub severity: Severity,
    /// What is wrong and what to do about it.
    pub message: String,
}

impl fmt::Display for Diagnostic {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let severity = match self.severity {
            Severity::Warning => "warning",
            Severity::Error => "error",
        };
        write!(
            f,
            "{}:{}:{}: {severity}: {}",
            self.file.display(),
            self.line,
            self.column,
            self.message
        )
    }
}

/// Turns byte offsets of one source text into line and column numbers.
#[derive(Debug)]
pub(crate) struct SourceMap<'a> {
    file: &'a Path,
    text: &'a str,
}

impl<'a> SourceMap<'a> {
    pub(crate) fn new(file: &'a Path, text: &'a str) -> Self {
        Self { file, text }
    }

    /// 1-based line and column of a byte offset (clamped to the text).
    pub(crate) fn position(&self, offset: usize) -> (usize, usize) {
        let mut offset = offset.min(self.text.len());
        while !self.text.is_char_boundary(offset) {
            offset -= 1;
        }
        let before = &self.text[..offset];
        let line = before.matches('\n').count() + 1;
        let line_start = before.rfind('\n').map_or(0, |i| i + 1);
        let column = before[line_start..].chars().count() + 1;
        (line, column)
    }

    /// A warning at a byte offset.
    pub(crate) fn warning(&self, offset: usize, message: impl Into<String>) -> Diagnostic {
        Diagnostic {
            severity: Severity::Warning,
            ..self.error(offset, message)
        }
    }

    /// An error at a byte offset.
    pub(crate) fn error(&self, offset: usize, message: impl Into<String>) -> Diagnostic {
        let (line, column) = self.position(offset);
        Diagnostic {
            file: self.file.to_path_buf(),
            line,
            column,
            severity: Severity::Error,
            message: message.into(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn offsets_map_to_one_based_lines_and_columns() {
        let text = "a = 1\nbé = 2\n";
        let map = SourceMap::new(Path::new("p.toml"), text);
        assert_eq!(map.position(0), (1, 1));
        assert_eq!(map.position(6), (2, 1));
        assert_eq!(map.position(text.find('=').unwrap()), (1, 3));
        // The byte after the two-byte 'é' is column 3.
        assert_eq!(map.position(9), (2, 3));
        assert_eq!(map.position(10_000), (3, 1));
    }

    #[test]
    fn a_diagnostic_prints_as_file_line_column() {
        let map = SourceMap::new(Path::new("x/p.toml"), "\n\n  bad");
        let d = map.error(4, "it is bad");
        assert_eq!(d.to_string(), "x/p.toml:3:3: error: it is bad");
    }
}
