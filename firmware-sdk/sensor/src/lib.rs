#![doc = include_str!("../README.md")]
#![no_std]
#![warn(missing_docs)]

pub mod command;
pub mod error;
pub mod node;
pub mod reading;
pub mod sht3x;

pub use command::{Command, Reply};
pub use error::{Error, ErrorKind};
pub use node::{Identity, Node, NodeError};
pub use reading::{Reading, TooLarge};
