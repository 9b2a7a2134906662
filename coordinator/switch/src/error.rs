//! The switch's error type and the one function that turns an SDK error into it.
//!
//! Classification uses the AWS error code (`ProvideErrorMetadata::code`) first and the HTTP
//! status second, because the same condition arrives with different codes from different services
//! (EC2 says `UnauthorizedOperation`, most others `AccessDenied`; moto says `AccessDenied` for EC2
//! too). Only [`SwitchError::Unavailable`] is retryable; see `retry.rs`.

use aws_sdk_ec2::error::{ProvideErrorMetadata, SdkError};

/// Why a switch operation failed. Every message says what to do about it.
#[derive(Debug, thiserror::Error)]
pub enum SwitchError {
    /// AWS refused the call: missing permission, bad or expired credentials, or a `DryRun` that
    /// would not have been allowed. Never retried.
    #[error("AWS refused {operation} ({code}: {message}); {hint}", hint = refused_hint(operation, code, message))]
    Refused {
        /// IAM action, e.g. `ec2:AssociateAddress`.
        operation: String,
        /// AWS error code, e.g. `UnauthorizedOperation`.
        code: String,
        /// AWS's own message.
        message: String,
    },
    /// Something the plan names does not exist in this account and region.
    #[error(
        "{what} {id} was not found; check the id in the plan, and that hostshift talks to the \
         right account and region"
    )]
    NotFound {
        /// Kind of thing, e.g. `Elastic IP allocation`.
        what: String,
        /// The id as the plan gives it.
        id: String,
    },
    /// A transient failure (throttling, AWS 5xx, timeout, connection) that persisted through the
    /// retries.
    #[error(
        "{operation} could not reach a working AWS endpoint: {message}; this is transient: \
         check the network to AWS and retry (a cutover resumes safely)"
    )]
    Unavailable {
        /// IAM action, e.g. `route53:GetChange`.
        operation: String,
        /// What went wrong on the last attempt.
        message: String,
    },
    /// The request or the plan is wrong in a way retrying cannot fix.
    #[error("{0}")]
    Invalid(String),
    /// The change was sent, but reading it back did not show it before the deadline.
    #[error(
        "{what}; the change was sent but not confirmed before the deadline: traffic may point at \
         either host, so read where it points now before doing anything else (the cutover's \
         resume does this), and raise the deadline if AWS is slow"
    )]
    Unconfirmed {
        /// What was not confirmed, and what was seen instead.
        what: String,
    },
}

impl SwitchError {
    /// `true` for errors worth retrying as they are.
    #[must_use]
    pub fn is_retryable(&self) -> bool {
        matches!(self, SwitchError::Unavailable { .. })
    }
}

fn refused_hint(operation: &str, code: &str, message: &str) -> String {
    if CREDENTIAL_CODES.contains(&code) {
        return "the credentials were not accepted: check the AWS profile or credential chain \
                hostshift runs with (expired SSO session, wrong keys, wrong account?)"
            .to_owned();
    }
    let mut hint = format!("grant {operation} to the role hostshift runs as");
    if message.contains("Encoded authorization failure message") {
        hint.push_str(" (`aws sts decode-authorization-message` shows which policy denied it)");
    }
    hint
}

/// Codes meaning "who you are" failed, rather than "what you may do".
const CREDENTIAL_CODES: &[&str] = &[
    "AuthFailure",
    "ExpiredToken",
    "ExpiredTokenException",
    "IncompleteSignature",
    "InvalidAccessKeyId",
    "InvalidClientTokenId",
    "InvalidSignatureException",
    "MissingAuthenticationToken",
    "SignatureDoesNotMatch",
    "UnrecognizedClientException",
];

/// Codes meaning the caller may not do this (besides [`CREDENTIAL_CODES`]).
const REFUSED_CODES: &[&str] = &[
    "AccessDenied",
    "AccessDeniedException",
    "Blocked",
    "OptInRequired",
    "UnauthorizedOperation",
];

/// Codes meaning "try again later".
const TRANSIENT_CODES: &[&str] = &[
    "BandwidthLimitExceeded",
    "EC2ThrottledException",
    "InternalError",
    "InternalFailure",
    "InternalServerError",
    "PriorRequestNotComplete",
    "RequestLimitExceeded",
    "RequestThrottled",
    "RequestThrottledException",
    "RequestTimeout",
    "RequestTimeoutException",
    "ServiceUnavailable",
    "SlowDown",
    "Throttling",
    "ThrottlingException",
    "TooManyRequestsException",
    "Unavailable",
];

/// The class of an AWS error, before the details are attached.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Class {
    Refused,
    NotFound,
    Unavailable,
    Invalid,
}

/// Classifies a service error from its code (if AWS sent one) and HTTP status.
pub(crate) fn classify_code(code: Option<&str>, status: u16) -> Class {
    if let Some(code) = code {
        if CREDENTIAL_CODES.contains(&code) || REFUSED_CODES.contains(&code) {
            return Class::Refused;
        }
        if TRANSIENT_CODES.contains(&code) {
            return Class::Unavailable;
        }
        if code.ends_with("NotFound")
            || code.ends_with("NotFoundException")
            || code.starts_with("NoSuch")
        {
            return Class::NotFound;
        }
    }
    match status {
        429 | 500..=599 => Class::Unavailable,
        401 | 403 => Class::Refused,
        404 => Class::NotFound,
        _ => Class::Invalid,
    }
}

/// Turns an SDK error from `operation` (an IAM action name) into a [`SwitchError`].
///
/// `not_found` maps the AWS error code to `(what, id)` for [`SwitchError::NotFound`]: only the
/// caller knows which of its ids a code like `InvalidInstanceID.NotFound` refers to.
pub(crate) fn classify<E>(
    operation: &str,
    err: &SdkError<E>,
    not_found: impl FnOnce(&str) -> (String, String),
) -> SwitchError
where
    E: ProvideErrorMetadata + std::error::Error + Send + Sync + 'static,
{
    let unavailable = |message: String| SwitchError::Unavailable {
        operation: operation.to_owned(),
        message,
    };
    match err {
        SdkError::TimeoutError(_) => unavailable(format!("timed out: {}", chain(err))),
        SdkError::DispatchFailure(failure) if !failure.is_user() => unavailable(chain(err)),
        SdkError::ServiceError(context) => {
            let status = context.raw().status().as_u16();
            let code = err.code();
            let message = err.message().unwrap_or("(no message)").to_owned();
            match classify_code(code, status) {
                Class::Refused => SwitchError::Refused {
                    operation: operation.to_owned(),
                    code: code.map_or_else(|| format!("HTTP {status}"), str::to_owned),
                    message,
                },
                Class::NotFound => {
                    let (what, id) = not_found(code.unwrap_or_default());
                    SwitchError::NotFound { what, id }
                }
                Class::Unavailable => unavailable(format!(
                    "HTTP {status} {}: {message}",
                    code.unwrap_or("(no code)")
                )),
                Class::Invalid => SwitchError::Invalid(format!(
                    "AWS rejected {operation} (HTTP {status} {}: {message}); check the plan's \
                     ids and that the resources are in a state that allows this change",
                    code.unwrap_or("(no code)")
                )),
            }
        }
        SdkError::ResponseError(context) if context.raw().status().is_server_error() => {
            unavailable(chain(err))
        }
        _ => SwitchError::Invalid(format!(
            "{operation} failed: {}; this is a bug or a misconfigured endpoint, not a transient \
             error",
            chain(err)
        )),
    }
}

/// The error and its sources, joined with `: ` (the SDK's own `Display` shows only the outer
/// layer, e.g. "dispatch failure", and its `DisplayErrorContext` appends a `Debug` dump).
fn chain(err: &(dyn std::error::Error + 'static)) -> String {
    let mut text = err.to_string();
    let mut source = err.source();
    while let Some(inner) = source {
        let inner_text = inner.to_string();
        // Some layers repeat their source's message; say it once.
        if !text.ends_with(&inner_text) {
            text.push_str(": ");
            text.push_str(&inner_text);
        }
        source = inner.source();
    }
    text
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn permission_and_credential_codes_are_refusals() {
        for code in [
            "UnauthorizedOperation",
            "AccessDenied",
            "AuthFailure",
            "ExpiredToken",
        ] {
            assert_eq!(classify_code(Some(code), 403), Class::Refused, "{code}");
        }
    }

    #[test]
    fn throttling_and_server_errors_are_transient() {
        assert_eq!(
            classify_code(Some("RequestLimitExceeded"), 503),
            Class::Unavailable
        );
        assert_eq!(classify_code(Some("Throttling"), 400), Class::Unavailable);
        assert_eq!(
            classify_code(Some("PriorRequestNotComplete"), 400),
            Class::Unavailable
        );
        assert_eq!(classify_code(None, 502), Class::Unavailable);
        assert_eq!(classify_code(None, 429), Class::Unavailable);
    }

    #[test]
    fn missing_resources_are_not_found_in_every_service_spelling() {
        for code in [
            "InvalidAllocationID.NotFound",
            "NoSuchHostedZone",
            "TargetGroupNotFound",
            "ResourceNotFoundException",
        ] {
            assert_eq!(classify_code(Some(code), 400), Class::NotFound, "{code}");
        }
    }

    #[test]
    fn other_client_errors_are_invalid_not_retried() {
        assert_eq!(
            classify_code(Some("Resource.AlreadyAssociated"), 400),
            Class::Invalid
        );
        assert_eq!(
            classify_code(Some("InvalidChangeBatch"), 400),
            Class::Invalid
        );
    }

    #[test]
    fn refusal_message_names_the_permission_to_grant() {
        let err = SwitchError::Refused {
            operation: "ec2:AssociateAddress".into(),
            code: "UnauthorizedOperation".into(),
            message: "You are not authorized to perform this operation.".into(),
        };
        assert!(
            err.to_string()
                .contains("grant ec2:AssociateAddress to the role hostshift runs as"),
            "{err}"
        );
        assert!(!err.is_retryable());
    }

    #[test]
    fn credential_refusal_points_at_the_credentials_not_a_policy() {
        let err = SwitchError::Refused {
            operation: "ec2:DescribeAddresses".into(),
            code: "AuthFailure".into(),
            message: "AWS was not able to validate the provided access credentials".into(),
        };
        assert!(
            err.to_string().contains("credentials were not accepted"),
            "{err}"
        );
    }
}
