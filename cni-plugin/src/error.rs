//! CNI errors: the spec's error codes and the one place where failures become them.
//!
//! Invariant: every failure a plugin reports is a [`CniError`] with a well-known code; the JSON
//! form `{"cniVersion","code","msg","details"}` is produced only by [`CniError::to_json`].

use serde::Serialize;
use std::fmt;

/// The error codes of the CNI spec (0–99 reserved) plus libcni's 999 for untyped failures.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ErrorCode {
    /// 1: the configuration's `cniVersion` is not one this plugin speaks.
    IncompatibleVersion,
    /// 2: a field of the network configuration is not supported (the message names it).
    UnsupportedField,
    /// 3: the container is unknown or does not exist.
    UnknownContainer,
    /// 4: a required environment variable is missing or invalid (the message names it).
    InvalidEnv,
    /// 5: an I/O failure, e.g. reading stdin.
    Io,
    /// 6: content (configuration JSON, a result) could not be decoded.
    Decode,
    /// 7: the network configuration is invalid.
    InvalidConfig,
    /// 11: a transient failure; try again later.
    TryAgain,
    /// 50: the plugin cannot service ADD (STATUS).
    NotAvailable,
    /// 51: not available, and existing containers may have limited connectivity (STATUS).
    LimitedConnectivity,
    /// 999: any other failure.
    Internal,
}

impl ErrorCode {
    pub fn as_u32(self) -> u32 {
        match self {
            ErrorCode::IncompatibleVersion => 1,
            ErrorCode::UnsupportedField => 2,
            ErrorCode::UnknownContainer => 3,
            ErrorCode::InvalidEnv => 4,
            ErrorCode::Io => 5,
            ErrorCode::Decode => 6,
            ErrorCode::InvalidConfig => 7,
            ErrorCode::TryAgain => 11,
            ErrorCode::NotAvailable => 50,
            ErrorCode::LimitedConnectivity => 51,
            ErrorCode::Internal => 999,
        }
    }

    pub fn from_u32(code: u32) -> ErrorCode {
        match code {
            1 => ErrorCode::IncompatibleVersion,
            2 => ErrorCode::UnsupportedField,
            3 => ErrorCode::UnknownContainer,
            4 => ErrorCode::InvalidEnv,
            5 => ErrorCode::Io,
            6 => ErrorCode::Decode,
            7 => ErrorCode::InvalidConfig,
            11 => ErrorCode::TryAgain,
            50 => ErrorCode::NotAvailable,
            51 => ErrorCode::LimitedConnectivity,
            _ => ErrorCode::Internal,
        }
    }
}

/// A failure as the CNI protocol reports it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CniError {
    pub code: ErrorCode,
    pub msg: String,
    pub details: String,
    /// The raw code when it came from another plugin with a code outside the known set.
    pub raw_code: Option<u32>,
    /// The kernel errno behind it (EEXIST, ENOENT, ...), when a kernel call failed; never on
    /// the wire.
    pub errno: Option<i32>,
}

pub type CniResultOf<T> = std::result::Result<T, CniError>;

impl CniError {
    pub fn new(code: ErrorCode, msg: impl Into<String>) -> Self {
        CniError {
            code,
            msg: msg.into(),
            details: String::new(),
            raw_code: None,
            errno: None,
        }
    }

    /// The same error, remembering the kernel errno behind it.
    pub fn with_errno(mut self, errno: Option<i32>) -> Self {
        self.errno = errno;
        self
    }

    pub fn details(mut self, details: impl Into<String>) -> Self {
        self.details = details.into();
        self
    }

    pub fn internal(msg: impl Into<String>) -> Self {
        CniError::new(ErrorCode::Internal, msg)
    }
    pub fn config(msg: impl Into<String>) -> Self {
        CniError::new(ErrorCode::InvalidConfig, msg)
    }
    pub fn decode(msg: impl Into<String>) -> Self {
        CniError::new(ErrorCode::Decode, msg)
    }
    pub fn env(msg: impl Into<String>) -> Self {
        CniError::new(ErrorCode::InvalidEnv, msg)
    }
    pub fn io(msg: impl Into<String>) -> Self {
        CniError::new(ErrorCode::Io, msg)
    }

    /// Prefix the message with the step that failed, keeping code and details.
    pub fn context(mut self, step: impl fmt::Display) -> Self {
        self.msg = format!("{step}: {}", self.msg);
        self
    }

    /// The numeric code printed on the wire.
    pub fn code_u32(&self) -> u32 {
        self.raw_code.unwrap_or_else(|| self.code.as_u32())
    }

    /// The error result JSON, stamped with the request's version.
    pub fn to_json(&self, cni_version: &str) -> serde_json::Value {
        #[derive(Serialize)]
        struct Wire<'a> {
            #[serde(rename = "cniVersion")]
            cni_version: &'a str,
            code: u32,
            msg: &'a str,
            #[serde(skip_serializing_if = "str::is_empty")]
            details: &'a str,
        }
        serde_json::to_value(Wire {
            cni_version,
            code: self.code_u32(),
            msg: &self.msg,
            details: &self.details,
        })
        .expect("error serialises")
    }

    /// Parse an error result printed by another plugin.
    pub fn from_json(v: &serde_json::Value) -> Option<CniError> {
        let code = v.get("code")?.as_u64()? as u32;
        let msg = v.get("msg").and_then(|m| m.as_str()).unwrap_or_default();
        let details = v
            .get("details")
            .and_then(|m| m.as_str())
            .unwrap_or_default();
        let kind = ErrorCode::from_u32(code);
        Some(CniError {
            code: kind,
            msg: msg.to_string(),
            details: details.to_string(),
            raw_code: (kind.as_u32() != code).then_some(code),
            errno: None,
        })
    }
}

impl fmt::Display for CniError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.msg)?;
        if !self.details.is_empty() {
            write!(f, " ({})", self.details)?;
        }
        Ok(())
    }
}

impl std::error::Error for CniError {}

impl From<std::io::Error> for CniError {
    fn from(e: std::io::Error) -> Self {
        CniError::internal(e.to_string())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_code_round_trips() {
        for code in [1, 2, 3, 4, 5, 6, 7, 11, 50, 51, 999] {
            assert_eq!(ErrorCode::from_u32(code).as_u32(), code);
        }
    }

    #[test]
    fn golden_error_json() {
        let e = CniError::new(
            ErrorCode::InvalidEnv,
            "required env variables [CNI_NETNS] missing",
        );
        assert_eq!(
            e.to_json("1.0.0").to_string(),
            r#"{"cniVersion":"1.0.0","code":4,"msg":"required env variables [CNI_NETNS] missing"}"#
        );
        let e = CniError::new(ErrorCode::NotAvailable, "no addresses left").details("10.0.0.0/30");
        assert_eq!(
            e.to_json("1.1.0").to_string(),
            r#"{"cniVersion":"1.1.0","code":50,"msg":"no addresses left","details":"10.0.0.0/30"}"#
        );
    }

    #[test]
    fn golden_json_for_every_code() {
        for (kind, code) in [
            (ErrorCode::IncompatibleVersion, 1),
            (ErrorCode::UnsupportedField, 2),
            (ErrorCode::UnknownContainer, 3),
            (ErrorCode::InvalidEnv, 4),
            (ErrorCode::Io, 5),
            (ErrorCode::Decode, 6),
            (ErrorCode::InvalidConfig, 7),
            (ErrorCode::TryAgain, 11),
            (ErrorCode::NotAvailable, 50),
            (ErrorCode::LimitedConnectivity, 51),
            (ErrorCode::Internal, 999),
        ] {
            let json = CniError::new(kind, "m").details("d").to_json("0.4.0");
            assert_eq!(
                json.to_string(),
                format!(r#"{{"cniVersion":"0.4.0","code":{code},"msg":"m","details":"d"}}"#)
            );
            assert_eq!(CniError::from_json(&json).unwrap().code, kind);
        }
    }

    #[test]
    fn foreign_codes_survive_parsing() {
        let v = serde_json::json!({"code": 123, "msg": "custom"});
        let e = CniError::from_json(&v).unwrap();
        assert_eq!(e.code_u32(), 123);
        assert_eq!(e.code, ErrorCode::Internal);
    }
}
