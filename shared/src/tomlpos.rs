//! TOML files whose errors name the file, the line and the key.
//!
//! Both the agent's config and the coordinator's plan are TOML read with serde
//! (`deny_unknown_fields`). Syntax and type errors come from the parser with a byte span; checks
//! that happen after parsing (a port out of range, a name used twice) look the key up again in
//! the source with [`Located::line_of`] so they can be reported at the right line too.

use std::fmt;
use std::path::{Path, PathBuf};

use serde::de::DeserializeOwned;

/// One problem in one file.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Problem {
    /// The file.
    pub file: PathBuf,
    /// 1-based line, when known.
    pub line: Option<usize>,
    /// Dotted key path (`databases.0.name`), empty for file-level problems.
    pub key: String,
    /// What is wrong and what to do.
    pub message: String,
}

impl fmt::Display for Problem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.file.display())?;
        if let Some(line) = self.line {
            write!(f, ":{line}")?;
        }
        if !self.key.is_empty() {
            write!(f, ": key `{}`", self.key)?;
        }
        write!(f, ": {}", self.message)
    }
}

/// All problems found in a file (at least one).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Problems(pub Vec<Problem>);

impl fmt::Display for Problems {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, p) in self.0.iter().enumerate() {
            if i > 0 {
                writeln!(f)?;
            }
            write!(f, "{p}")?;
        }
        Ok(())
    }
}

impl std::error::Error for Problems {}

/// A TOML source kept beside what was parsed from it, to locate keys for later checks.
pub struct Located {
    file: PathBuf,
    source: String,
    doc: Option<toml_edit::Document<String>>,
}

impl Located {
    /// Reads `file`.
    ///
    /// # Errors
    /// A [`Problems`] naming the file when it cannot be read.
    pub fn read(file: &Path) -> Result<Self, Problems> {
        let source = std::fs::read_to_string(file).map_err(|e| {
            Problems(vec![Problem {
                file: file.to_path_buf(),
                line: None,
                key: String::new(),
                message: format!("cannot read: {e}"),
            }])
        })?;
        Ok(Self::from_source(file, source))
    }

    /// Wraps source text that came from `file`.
    pub fn from_source(file: &Path, source: String) -> Self {
        let doc = toml_edit::Document::parse(source.clone()).ok();
        Self {
            file: file.to_path_buf(),
            source,
            doc,
        }
    }

    /// The file name.
    pub fn file(&self) -> &Path {
        &self.file
    }

    /// Deserializes the whole file.
    ///
    /// # Errors
    /// A [`Problems`] with the line and key of the syntax or type error.
    pub fn parse<T: DeserializeOwned>(&self) -> Result<T, Problems> {
        toml::from_str(&self.source).map_err(|e| {
            let line = e.span().map(|s| self.line_at(s.start));
            let key = self.key_at(e.span().map_or(0, |s| s.start));
            Problems(vec![Problem {
                file: self.file.clone(),
                line,
                key,
                message: e.message().trim().to_string(),
            }])
        })
    }

    fn line_at(&self, byte: usize) -> usize {
        self.source[..byte.min(self.source.len())]
            .bytes()
            .filter(|b| *b == b'\n')
            .count()
            + 1
    }

    /// The key written on the line holding `byte` (best effort, for messages only).
    fn key_at(&self, byte: usize) -> String {
        let start = self.source[..byte.min(self.source.len())]
            .rfind('\n')
            .map_or(0, |i| i + 1);
        let line = self.source[start..].lines().next().unwrap_or("");
        match line.split_once('=') {
            Some((k, _)) if !k.trim_start().starts_with('[') => k.trim().to_string(),
            _ => String::new(),
        }
    }

    /// The 1-based line of a dotted key path; numbers index arrays (`databases.1.name`).
    pub fn line_of(&self, path: &str) -> Option<usize> {
        let doc = self.doc.as_ref()?;
        let mut item: &toml_edit::Item = doc.as_item();
        let mut last_span = None;
        for seg in path.split('.').filter(|s| !s.is_empty()) {
            item = match (seg.parse::<usize>(), item) {
                (Ok(i), toml_edit::Item::ArrayOfTables(a)) => {
                    let t = a.get(i)?;
                    last_span = t.span().or(last_span);
                    // Wrap the table to keep walking.
                    return self
                        .walk_table(t, path.split('.').skip_while(|s| *s != seg).skip(1))
                        .or_else(|| last_span.map(|s| self.line_at(s.start)));
                }
                (Ok(i), toml_edit::Item::Value(toml_edit::Value::Array(a))) => {
                    let v = a.get(i)?;
                    return v.span().map(|s| self.line_at(s.start));
                }
                (_, toml_edit::Item::Table(t)) => t.get(seg)?,
                (_, toml_edit::Item::Value(toml_edit::Value::InlineTable(t))) => {
                    let v = t.get(seg)?;
                    return v.span().map(|s| self.line_at(s.start));
                }
                _ => return last_span.map(|s| self.line_at(s.start)),
            };
            last_span = item.span().or(last_span);
        }
        last_span.map(|s| self.line_at(s.start))
    }

    fn walk_table<'a>(
        &self,
        table: &toml_edit::Table,
        mut rest: impl Iterator<Item = &'a str>,
    ) -> Option<usize> {
        let Some(seg) = rest.next() else {
            return table.span().map(|s| self.line_at(s.start));
        };
        match table.get(seg)? {
            toml_edit::Item::Table(t) => self.walk_table(t, rest),
            other => other.span().map(|s| self.line_at(s.start)),
        }
    }

    /// A problem at `path`, with its line looked up.
    pub fn problem(&self, path: &str, message: impl Into<String>) -> Problem {
        Problem {
            file: self.file.clone(),
            line: self.line_of(path),
            key: path.to_string(),
            message: message.into(),
        }
    }
}

/// Every dotted key path that a TOML value sets (`databases[].name`, `tls.cert`, ...). Used by
/// the tests that keep the reference docs and the real config types from drifting apart.
pub fn key_paths(v: &toml::Value) -> std::collections::BTreeSet<String> {
    fn walk(prefix: &str, v: &toml::Value, out: &mut std::collections::BTreeSet<String>) {
        match v {
            toml::Value::Table(t) => {
                for (k, v) in t {
                    let p = if prefix.is_empty() {
                        k.clone()
                    } else {
                        format!("{prefix}.{k}")
                    };
                    walk(&p, v, out);
                }
            }
            toml::Value::Array(a) if a.iter().all(toml::Value::is_table) && !a.is_empty() => {
                for item in a {
                    walk(&format!("{prefix}[]"), item, out);
                }
            }
            _ => {
                out.insert(prefix.to_string());
            }
        }
    }
    let mut out = std::collections::BTreeSet::new();
    walk("", v, &mut out);
    out
}

/// The first ```` ```toml ```` block of a Markdown document.
pub fn first_toml_block(markdown: &str) -> Option<&str> {
    let start = markdown.find("```toml\n")? + "```toml\n".len();
    let len = markdown[start..].find("\n```")?;
    Some(&markdown[start..start + len + 1])
}

/// Why a document's reference block and the types it documents disagree.
#[derive(Debug, thiserror::Error)]
pub enum ReferenceBlockError {
    /// The document has no ```` ```toml ```` block.
    #[error("no ```toml block in the document")]
    NoBlock,
    /// The block is not valid for the types.
    #[error("the reference block does not parse: {0}")]
    Parse(toml::de::Error),
    /// The block is not TOML at all.
    #[error("the reference block is not TOML: {0}")]
    NotToml(toml::de::Error),
    /// The parsed value cannot be written back.
    #[error("the parsed reference block cannot be serialized: {0}")]
    Serialize(toml::ser::Error),
    /// Keys set on one side only.
    #[error(
        "keys the types have but the doc lacks: {missing:?}; keys the doc has but the types drop: {extra:?}"
    )]
    Keys {
        /// Keys the types write that the doc does not set.
        missing: Vec<String>,
        /// Keys the doc sets that the types do not keep.
        extra: Vec<String>,
    },
}

/// Asserts, for tests, that `T` parsed from the doc's reference block and serialized back sets
/// exactly the keys the block sets: a field added, renamed or removed in `T` without the doc
/// changing fails.
///
/// # Errors
/// [`ReferenceBlockError::Keys`] naming the keys that differ.
pub fn check_reference_block<T>(markdown: &str) -> Result<(), ReferenceBlockError>
where
    T: serde::de::DeserializeOwned + serde::Serialize,
{
    let block = first_toml_block(markdown).ok_or(ReferenceBlockError::NoBlock)?;
    let parsed: T = toml::from_str(block).map_err(ReferenceBlockError::Parse)?;
    let doc: toml::Value = toml::from_str(block).map_err(ReferenceBlockError::NotToml)?;
    let back = toml::Value::try_from(&parsed).map_err(ReferenceBlockError::Serialize)?;
    let (doc_keys, type_keys) = (key_paths(&doc), key_paths(&back));
    let missing: Vec<String> = type_keys.difference(&doc_keys).cloned().collect();
    let extra: Vec<String> = doc_keys.difference(&type_keys).cloned().collect();
    if missing.is_empty() && extra.is_empty() {
        Ok(())
    } else {
        Err(ReferenceBlockError::Keys { missing, extra })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(serde::Deserialize, Debug)]
    #[serde(deny_unknown_fields)]
    #[allow(dead_code)]
    struct Conf {
        listen: String,
        #[serde(default)]
        databases: Vec<Db>,
    }

    #[derive(serde::Deserialize, Debug)]
    #[serde(deny_unknown_fields)]
    #[allow(dead_code)]
    struct Db {
        name: String,
    }

    const SRC: &str =
        "listen = \"x\"\n\n[[databases]]\nname = \"a\"\n\n[[databases]]\nname = \"b\"\n";

    #[test]
    fn unknown_key_is_reported_with_its_line_and_key() {
        let src = "listen = \"x\"\n[[databases]]\nname = \"a\"\nnmae = \"b\"\n";
        let l = Located::from_source(Path::new("agent.toml"), src.into());
        let err = l.parse::<Conf>().expect_err("unknown key");
        let text = err.to_string();
        assert!(text.starts_with("agent.toml:4: key `nmae`"), "{text}");
        assert!(text.contains("unknown field"), "{text}");
    }

    #[test]
    fn line_of_finds_keys_inside_arrays_of_tables() {
        let l = Located::from_source(Path::new("p.toml"), SRC.into());
        assert_eq!(l.line_of("listen"), Some(1));
        assert_eq!(l.line_of("databases.1.name"), Some(7));
        assert_eq!(l.line_of("databases.0.name"), Some(4));
    }
}
