//! The Nix formats lazix speaks: NAR, narinfo, nixbase32, store paths,
//! hashes and signatures. Small and exact, tested against real `nix`.

pub mod hash;
pub mod local;
pub mod nar;
pub mod narinfo;
pub mod nixbase32;
pub mod register;
pub mod signing;
pub mod store_path;
