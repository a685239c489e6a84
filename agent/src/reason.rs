//! Why a request was allowed or refused: one enum that is the `reason` of
//! the JSON refusal body, of the audit line and of the
//! `nodeward_requests_total{reason}` label, and that decides the refusal's
//! HTTP status and RFC 6750 challenge. Every value on the wire comes from
//! [`Reason::as_str`].

use http::StatusCode;

macro_rules! reasons {
    ($($variant:ident => $text:literal,)*) => {
        #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
        pub enum Reason {
            $($variant,)*
        }

        impl Reason {
            pub const ALL: &'static [Reason] = &[$(Reason::$variant,)*];

            pub fn as_str(self) -> &'static str {
                match self {
                    $(Reason::$variant => $text,)*
                }
            }
        }
    };
}

reasons! {
    // Allowed.
    Anonymous => "anonymous",
    Authorized => "authorized",
    // The request itself (400 / 501): refused before any rule.
    InvalidPath => "invalid_path",
    InvalidMethod => "invalid_method",
    InvalidHeader => "invalid_header",
    UnsupportedRequest => "unsupported_request",
    // No usable token (401).
    MissingToken => "missing_token",
    MalformedToken => "malformed_token",
    UnsupportedToken => "unsupported_token",
    TokenTooLarge => "token_too_large",
    AlgorithmNotAllowed => "algorithm_not_allowed",
    AlgorithmMismatch => "algorithm_mismatch",
    UnknownCrit => "unknown_crit",
    TokenTypeNotAllowed => "token_type_not_allowed",
    UnknownIssuer => "unknown_issuer",
    NoKeys => "no_keys",
    UnknownKid => "unknown_kid",
    BadSignature => "bad_signature",
    TokenExpired => "token_expired",
    TokenNotYetValid => "token_not_yet_valid",
    TokenIssuedInFuture => "token_issued_in_future",
    WrongAudience => "wrong_audience",
    TokenRevoked => "token_revoked",
    // Authenticated (or not needed) but not permitted (403).
    ClaimMismatch => "claim_mismatch",
    ProviderNotAllowed => "provider_not_allowed",
    ClaimNotForwardable => "claim_not_forwardable",
    RuleDenies => "rule_denies",
    NoMatchingRule => "no_matching_rule",
    NoPolicy => "no_policy",
    SourceMismatch => "source_mismatch",
    KubernetesUserInvalid => "kubernetes_user_invalid",
    RbacDenied => "rbac_denied",
    // The API server could not be asked (503): fail closed, never a guess.
    RbacUnavailable => "rbac_unavailable",
    TokenReviewUnavailable => "token_review_unavailable",
}

/// How a refusal is answered.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Answer {
    /// 401 without `error`: no token was presented (RFC 6750 §3.1).
    NoToken,
    /// 401 `invalid_token`.
    InvalidToken,
    /// 403 `insufficient_scope`.
    Forbidden,
    /// 400: the request cannot be matched as sent.
    BadRequest,
    /// 501: something the proxy does not implement (CONNECT, `OPTIONS *`).
    NotImplemented,
    /// 503: a decision needs the API server, which did not answer.
    Unavailable,
}

impl Reason {
    /// Whether this reason lets the request through.
    pub fn allows(self) -> bool {
        matches!(self, Self::Anonymous | Self::Authorized)
    }

    pub fn answer(self) -> Answer {
        match self {
            Self::MissingToken => Answer::NoToken,
            Self::MalformedToken
            | Self::UnsupportedToken
            | Self::TokenTooLarge
            | Self::AlgorithmNotAllowed
            | Self::AlgorithmMismatch
            | Self::UnknownCrit
            | Self::TokenTypeNotAllowed
            | Self::UnknownIssuer
            | Self::NoKeys
            | Self::UnknownKid
            | Self::BadSignature
            | Self::TokenExpired
            | Self::TokenNotYetValid
            | Self::TokenIssuedInFuture
            | Self::WrongAudience
            | Self::TokenRevoked => Answer::InvalidToken,
            Self::RbacUnavailable | Self::TokenReviewUnavailable => Answer::Unavailable,
            Self::InvalidPath | Self::InvalidMethod | Self::InvalidHeader => Answer::BadRequest,
            Self::UnsupportedRequest => Answer::NotImplemented,
            Self::Anonymous
            | Self::Authorized
            | Self::ClaimMismatch
            | Self::ProviderNotAllowed
            | Self::ClaimNotForwardable
            | Self::RuleDenies
            | Self::NoMatchingRule
            | Self::NoPolicy
            | Self::SourceMismatch
            | Self::KubernetesUserInvalid
            | Self::RbacDenied => Answer::Forbidden,
        }
    }
}

impl Answer {
    pub fn status(self) -> StatusCode {
        match self {
            Self::NoToken | Self::InvalidToken => StatusCode::UNAUTHORIZED,
            Self::Forbidden => StatusCode::FORBIDDEN,
            Self::BadRequest => StatusCode::BAD_REQUEST,
            Self::NotImplemented => StatusCode::NOT_IMPLEMENTED,
            Self::Unavailable => StatusCode::SERVICE_UNAVAILABLE,
        }
    }
}

impl std::fmt::Display for Reason {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

#[cfg(test)]
mod tests {
    use std::collections::HashSet;

    use super::Reason;

    #[test]
    fn every_reason_has_its_own_text() {
        let texts: HashSet<&str> = Reason::ALL.iter().map(|r| r.as_str()).collect();
        assert_eq!(texts.len(), Reason::ALL.len());
        assert!(
            texts
                .iter()
                .all(|t| t.bytes().all(|b| b.is_ascii_lowercase() || b == b'_'))
        );
    }
}
