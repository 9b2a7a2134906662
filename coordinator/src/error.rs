//! How a command fails, and which documented exit code that becomes (docs/exit-codes.md).

use hostshift_shared::exit;

/// A failed command. The variant decides the exit code; the error says what happened and what
/// to do.
#[derive(Debug)]
pub enum CliError {
    /// Bad flags, plan or input: nothing was done (exit 2).
    Usage(anyhow::Error),
    /// The operation failed; the old host is untouched (exit 1).
    Failed(anyhow::Error),
    /// hostshift could not finish or undo by itself; the message says what to do (exit 3).
    OperatorAction(anyhow::Error),
    /// The work was already done; nothing was touched (exit 4).
    NothingToDo(anyhow::Error),
    /// A comparison could not run (an agent could not reach what it compares): no verdict (exit 5).
    CouldNotCompare(anyhow::Error),
}

impl CliError {
    /// The process exit code.
    pub fn code(&self) -> u8 {
        match self {
            CliError::Usage(_) => exit::USAGE,
            CliError::Failed(_) => exit::FAILED,
            CliError::OperatorAction(_) => exit::OPERATOR_ACTION,
            CliError::NothingToDo(_) => exit::NOTHING_TO_DO,
            CliError::CouldNotCompare(_) => exit::COULD_NOT_COMPARE,
        }
    }

    /// The error inside.
    pub fn error(&self) -> &anyhow::Error {
        match self {
            CliError::Usage(e)
            | CliError::Failed(e)
            | CliError::OperatorAction(e)
            | CliError::NothingToDo(e)
            | CliError::CouldNotCompare(e) => e,
        }
    }
}

/// Result of a command.
pub type CliResult = Result<(), CliError>;

/// Shorthand: a usage error from anything printable.
pub fn usage(e: impl Into<anyhow::Error>) -> CliError {
    CliError::Usage(e.into())
}

/// A call an agent answered with an error: a usage error (exit 2) when the agent refused the
/// request itself (`InvalidArgument`: a name its config does not declare, a malformed value —
/// nothing was done), otherwise a failure (exit 1).
pub fn from_status(s: &tonic::Status, e: impl Into<anyhow::Error>) -> CliError {
    if s.code() == tonic::Code::InvalidArgument {
        CliError::Usage(e.into())
    } else {
        CliError::Failed(e.into())
    }
}

/// Shorthand: a failure from anything printable.
pub fn failed(e: impl Into<anyhow::Error>) -> CliError {
    CliError::Failed(e.into())
}
