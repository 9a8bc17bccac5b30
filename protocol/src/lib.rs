#![forbid(unsafe_code)]
pub mod authority;
pub mod codec;
pub mod directory;
pub mod feed;
pub mod harness;
pub mod hub;
pub mod ids;
pub mod machine;
pub mod records;
pub mod setting;
pub mod sign;
pub mod store;
pub mod time;
pub mod wire;
