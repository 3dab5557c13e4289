//! Backup and restore (`org-gateway backup`, `org-gateway restore`): every tenant collection
//! and the catalog in mongodump's directory layout, and write marks for `--since`.

mod marks;

pub use marks::WriteMarks;
