//! The group controller.
