use super::ValidationError;
use std::fmt;

/// A plaintext password as received: 8 to 128 characters. Its `Debug` never shows the value,
/// so it cannot leak into logs.
#[derive(Clone)]
pub struct Password(String);

impl Password {
    /// Shortest accepted password, in characters.
    pub const MIN_CHARS: usize = 8;
    /// Longest accepted password, in characters (bounds the hashing cost of a request).
    pub const MAX_CHARS: usize = 128;

    /// Checks the length rules.
    pub fn parse(raw: &str) -> Result<Self, ValidationError> {
        let n = raw.chars().count();
        if !(Self::MIN_CHARS..=Self::MAX_CHARS).contains(&n) {
            return Err(ValidationError::new(
                "password",
                format!(
                    "must be {} to {} characters",
                    Self::MIN_CHARS,
                    Self::MAX_CHARS
                ),
            ));
        }
        if raw.contains('\0') {
            return Err(ValidationError::new("password", "must not contain NUL"));
        }
        Ok(Self(raw.to_owned()))
    }

    /// The secret itself, for hashing only.
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for Password {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Password(<redacted>)")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn length_bounds() {
        assert!(Password::parse("1234567").is_err());
        assert!(Password::parse("12345678").is_ok());
        assert!(Password::parse(&"x".repeat(129)).is_err());
        assert_eq!(
            format!("{:?}", Password::parse("hunter2hunter2").unwrap()),
            "Password(<redacted>)"
        );
    }
}
