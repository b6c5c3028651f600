//! CNI spec versions: the exact set plugnet speaks and what each one allows.
//!
//! Invariant: a request is served only in a version from [`SUPPORTED`]; results are printed in
//! exactly that version.

use crate::error::{CniError, ErrorCode};
use std::fmt;

/// Every spec version plugnet accepts, in ascending order; VERSION lists exactly these.
pub const SUPPORTED: &[&str] = &["0.3.0", "0.3.1", "0.4.0", "1.0.0", "1.1.0"];

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum CniVersion {
    V0_3_0,
    V0_3_1,
    V0_4_0,
    V1_0_0,
    V1_1_0,
}

impl CniVersion {
    pub const LATEST: CniVersion = CniVersion::V1_1_0;

    pub fn parse(s: &str) -> Result<CniVersion, CniError> {
        Ok(match s {
            "0.3.0" => CniVersion::V0_3_0,
            "0.3.1" => CniVersion::V0_3_1,
            "0.4.0" => CniVersion::V0_4_0,
            "1.0.0" => CniVersion::V1_0_0,
            "1.1.0" => CniVersion::V1_1_0,
            other => {
                return Err(CniError::new(
                    ErrorCode::IncompatibleVersion,
                    "incompatible CNI versions",
                )
                .details(format!(
                    "config is \"{other}\", plugin supports {:?}",
                    SUPPORTED
                )))
            }
        })
    }

    pub fn as_str(self) -> &'static str {
        match self {
            CniVersion::V0_3_0 => "0.3.0",
            CniVersion::V0_3_1 => "0.3.1",
            CniVersion::V0_4_0 => "0.4.0",
            CniVersion::V1_0_0 => "1.0.0",
            CniVersion::V1_1_0 => "1.1.0",
        }
    }

    /// 0.3.x and 0.4.0 results carry `ips[].version`; 1.x results do not.
    pub fn has_ip_version_field(self) -> bool {
        self < CniVersion::V1_0_0
    }
    /// CHECK exists from 0.4.0 on.
    pub fn allows_check(self) -> bool {
        self >= CniVersion::V0_4_0
    }
    /// STATUS and GC exist from 1.1.0 on.
    pub fn allows_status_and_gc(self) -> bool {
        self >= CniVersion::V1_1_0
    }
    /// The optional 1.1 result fields (interface mtu/socketPath/pciID, route mtu/advmss/…).
    pub fn has_1_1_fields(self) -> bool {
        self >= CniVersion::V1_1_0
    }
    /// DEL receives `prevResult` from 0.4.0 on.
    pub fn passes_prev_result_on_del(self) -> bool {
        self >= CniVersion::V0_4_0
    }
}

impl fmt::Display for CniVersion {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_exactly_the_supported_set() {
        for v in SUPPORTED {
            assert_eq!(CniVersion::parse(v).unwrap().as_str(), *v);
        }
        for bad in ["0.1.0", "0.2.0", "1.2.0", "", "1.0", "v1.0.0"] {
            let e = CniVersion::parse(bad).unwrap_err();
            assert_eq!(e.code, ErrorCode::IncompatibleVersion);
        }
    }

    #[test]
    fn feature_gates() {
        assert!(!CniVersion::V0_3_1.allows_check());
        assert!(CniVersion::V0_4_0.allows_check());
        assert!(!CniVersion::V1_0_0.allows_status_and_gc());
        assert!(CniVersion::V1_1_0.allows_status_and_gc());
        assert!(CniVersion::V0_4_0.has_ip_version_field());
        assert!(!CniVersion::V1_0_0.has_ip_version_field());
    }
}
