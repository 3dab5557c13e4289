//! Authentication: argon2id password hashing on a bounded blocking pool, and JWT issue/verify.

pub mod jwt;
pub mod password;

pub use jwt::{Claims, JwtKeys, VerifyError};
pub use password::PasswordHasher;
