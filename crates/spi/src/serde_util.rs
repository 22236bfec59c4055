//! Small serde helpers for compatibility with JSON written by Go (which writes `null` for empty maps
//! and slices unless told otherwise).

use serde::{Deserialize, Deserializer};

/// Deserializes `null` as the type's default, so `"Tags": null` reads as an empty map.
pub fn null_as_default<'de, D, T>(de: D) -> Result<T, D::Error>
where
    D: Deserializer<'de>,
    T: Default + Deserialize<'de>,
{
    Ok(Option::<T>::deserialize(de)?.unwrap_or_default())
}

pub fn is_zero(n: &u64) -> bool {
    *n == 0
}
