pub mod store;
pub mod transport;
