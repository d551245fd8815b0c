//! Why a configuration was rejected, and what was accepted with a warning.
//!
//! Every problem names the full key path (`BUILD_MANAGER[1].ORCHESTRATOR.REDIS_PORT`) and says what
//! form was expected, so `buildman check-config` can print them as they are. Parsing and
//! validation collect every problem they find instead of stopping at the first one.

use std::fmt;
use std::path::PathBuf;

/// A configuration that could not be read, parsed or validated.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The file could not be read.
    #[error("failed to read config file {path:?}")]
    Read {
        /// The file.
        path: PathBuf,
        /// The cause.
        #[source]
        source: std::io::Error,
    },
    /// The text is not YAML (syntax error, duplicate key, ...).
    #[error("{origin} is not valid yaml")]
    Yaml {
        /// Where the text came from (`config file "x.yaml"` or `config text`).
        origin: String,
        /// The cause, with line and column.
        #[source]
        source: serde_yaml::Error,
    },
    /// The YAML parsed, but keys or values are wrong; every problem found is listed.
    #[error("{origin} is invalid: {}", ProblemList(problems))]
    Invalid {
        /// Where the text came from.
        origin: String,
        /// At least one problem, in document order.
        problems: Vec<ConfigProblem>,
    },
}

impl ConfigError {
    /// The individual problems (empty unless this is [`ConfigError::Invalid`]).
    pub fn problems(&self) -> &[ConfigProblem] {
        match self {
            ConfigError::Invalid { problems, .. } => problems,
            _ => &[],
        }
    }
}

/// Renders one problem inline, or several one per line.
struct ProblemList<'a>(&'a [ConfigProblem]);

impl fmt::Display for ProblemList<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.0 {
            [one] => write!(f, "{one}"),
            many => {
                write!(f, "{} problems", many.len())?;
                for p in many {
                    write!(f, "\n  {p}")?;
                }
                Ok(())
            }
        }
    }
}

/// One wrong key or value.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ConfigProblem {
    /// Full key path, e.g. `BUILD_MANAGER[1].EXECUTORS[0].SETUP_TIME`.
    pub key: String,
    /// What is wrong.
    pub kind: ProblemKind,
}

/// The classes of configuration mistakes.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ProblemKind {
    /// A key neither Quarry nor Quay knows at this place.
    Unknown {
        /// The closest known key, when one is close.
        suggestion: Option<String>,
    },
    /// A key Quay knows, but somewhere else in the document.
    Misplaced {
        /// Where it belongs, e.g. `BUILD_MANAGER[1]`.
        place: &'static str,
    },
    /// A value of the wrong type or out of range.
    WrongValue {
        /// The accepted form, e.g. `an integer port 1-65535`.
        expected: String,
        /// The value found, rendered compactly (`"abc"`, `70000`, `a list`).
        got: String,
    },
    /// A required key is absent.
    Missing {
        /// The accepted form.
        expected: String,
    },
    /// A `*_PREFIX` key inside `ORCHESTRATOR` (Quay rejects these as legacy too).
    LegacyPrefix,
    /// An executor kind Quarry parses but cannot run yet.
    NotImplemented {
        /// The `EXECUTOR` value.
        executor: String,
        /// When it is planned, e.g. `issue 4`.
        planned: &'static str,
    },
    /// A value that is well-formed alone but conflicts with the rest of the document, or a
    /// registry-core validation failure; the text says what to change.
    Conflict {
        /// What is wrong and what to do.
        problem: String,
    },
}

impl fmt::Display for ConfigProblem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let key = &self.key;
        match &self.kind {
            ProblemKind::Unknown { suggestion: None } => write!(f, "unknown key {key}"),
            ProblemKind::Unknown {
                suggestion: Some(s),
            } => write!(f, "unknown key {key} (did you mean {s}?)"),
            ProblemKind::Misplaced { place } => {
                write!(f, "{key}: this key belongs inside {place}; move it there")
            }
            ProblemKind::WrongValue { expected, got } => {
                write!(f, "{key}: expected {expected}, got {got}")
            }
            ProblemKind::Missing { expected } => write!(f, "{key}: required, expected {expected}"),
            ProblemKind::LegacyPrefix => write!(
                f,
                "{key}: legacy prefix key inside ORCHESTRATOR; \
                 set BUILD_MANAGER[1].ORCHESTRATOR_PREFIX instead"
            ),
            ProblemKind::NotImplemented { executor, planned } => write!(
                f,
                "{key}: executor {executor} is not implemented yet ({planned}); \
                 use EXECUTOR: popen for now"
            ),
            ProblemKind::Conflict { problem } => write!(f, "{key}: {problem}"),
        }
    }
}

/// A key that was accepted but has no effect.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ConfigWarning {
    /// Full key path.
    pub key: String,
    /// Why it has no effect.
    pub kind: WarningKind,
}

/// Why an accepted key is ignored.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum WarningKind {
    /// A Quay setting for a feature Quarry does not implement (yet).
    QuayOnly,
    /// An executor key that another executor kind uses.
    NotForExecutor {
        /// The `EXECUTOR` of the entry holding the key.
        executor: &'static str,
    },
    /// The legacy `EXECUTOR` + `EXECUTOR_CONFIG` form; it works, `EXECUTORS` is preferred.
    LegacyExecutorForm,
    /// `BUILD_MANAGER[0]` is `external`: this process schedules no builds.
    ExternalManager,
}

impl fmt::Display for ConfigWarning {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let key = &self.key;
        match &self.kind {
            WarningKind::QuayOnly => {
                write!(
                    f,
                    "{key}: a Quay setting Quarry does not implement yet; ignored"
                )
            }
            WarningKind::NotForExecutor { executor } => {
                write!(f, "{key}: not used by the {executor} executor; ignored")
            }
            WarningKind::LegacyExecutorForm => write!(
                f,
                "{key}: legacy EXECUTOR + EXECUTOR_CONFIG form; \
                 prefer EXECUTORS: [{{EXECUTOR: ..., ...}}]"
            ),
            WarningKind::ExternalManager => write!(
                f,
                "{key}: \"external\" means another process runs builds; \
                 this buildman schedules none"
            ),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn problem(key: &str, kind: ProblemKind) -> ConfigProblem {
        ConfigProblem {
            key: key.to_owned(),
            kind,
        }
    }

    #[test]
    fn problems_render_with_key_first_and_expected_form() {
        let p = problem(
            "BUILD_MANAGER[1].ORCHESTRATOR.REDIS_PORT",
            ProblemKind::WrongValue {
                expected: "an integer port 1-65535".to_owned(),
                got: "\"abc\"".to_owned(),
            },
        );
        assert_eq!(
            p.to_string(),
            r#"BUILD_MANAGER[1].ORCHESTRATOR.REDIS_PORT: expected an integer port 1-65535, got "abc""#
        );
        let u = problem(
            "BUILD_MANAGER[1].ALLOWED_WORKERS",
            ProblemKind::Unknown {
                suggestion: Some("ALLOWED_WORKER_COUNT".to_owned()),
            },
        );
        assert_eq!(
            u.to_string(),
            "unknown key BUILD_MANAGER[1].ALLOWED_WORKERS (did you mean ALLOWED_WORKER_COUNT?)"
        );
    }

    #[test]
    fn invalid_error_lists_one_inline_and_many_on_lines() {
        let one = ConfigError::Invalid {
            origin: "config text".to_owned(),
            problems: vec![problem("X", ProblemKind::Unknown { suggestion: None })],
        };
        assert_eq!(one.to_string(), "config text is invalid: unknown key X");
        let two = ConfigError::Invalid {
            origin: "config text".to_owned(),
            problems: vec![
                problem("X", ProblemKind::Unknown { suggestion: None }),
                problem("Y", ProblemKind::LegacyPrefix),
            ],
        };
        let text = two.to_string();
        assert!(text.starts_with("config text is invalid: 2 problems\n  unknown key X\n  Y: "));
        assert_eq!(two.problems().len(), 2);
    }
}
