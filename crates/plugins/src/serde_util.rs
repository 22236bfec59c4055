//! Serde helpers shared by the plugins' property types.

use serde::{Deserialize, Deserializer};

/// Reads `null` as the type's default, so a hand-written `"Tags": null` (or Go's habit of writing
/// `null` for empty slices and maps) means "none" instead of an error.
pub(crate) fn null_as_default<'de, D, T>(de: D) -> Result<T, D::Error>
where
    D: Deserializer<'de>,
    T: Default + Deserialize<'de>,
{
    Ok(Option::<T>::deserialize(de)?.unwrap_or_default())
}
