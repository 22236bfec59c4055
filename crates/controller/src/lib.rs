//! The group plugin.
