//! Names to small integers, hashed once per result with a fast non-cryptographic hash (the
//! inputs are our own agents' ids, not attacker-chosen keys worth a DoS-resistant hash).

use std::collections::HashMap;
use std::hash::{BuildHasherDefault, Hasher};

/// The Fx hash (as in rustc): a multiply and rotate per eight bytes.
#[derive(Default, Clone, Copy)]
pub(crate) struct FxHasher {
    hash: u64,
}

const SEED: u64 = 0x51_7c_c1_b7_27_22_0a_95;

impl FxHasher {
    #[inline]
    fn add(&mut self, word: u64) {
        self.hash = (self.hash.rotate_left(5) ^ word).wrapping_mul(SEED);
    }
}

impl Hasher for FxHasher {
    #[inline]
    fn write(&mut self, bytes: &[u8]) {
        let mut chunks = bytes.chunks_exact(8);
        for c in &mut chunks {
            let mut w = [0u8; 8];
            w.copy_from_slice(c);
            self.add(u64::from_le_bytes(w));
        }
        let rest = chunks.remainder();
        if !rest.is_empty() {
            let mut w = [0u8; 8];
            w[..rest.len()].copy_from_slice(rest);
            self.add(u64::from_le_bytes(w));
        }
    }

    #[inline]
    fn write_u8(&mut self, i: u8) {
        self.add(u64::from(i));
    }

    #[inline]
    fn finish(&self) -> u64 {
        self.hash
    }
}

/// A 32-bit hash of a probe id, kept per result to recognise re-sends.
pub(crate) fn id_hash(id: &str) -> u32 {
    let mut h = FxHasher::default();
    h.write(id.as_bytes());
    let v = h.finish();
    (v ^ (v >> 32)) as u32
}

/// Interns names: the first time a name is seen it gets the next index.
#[derive(Default)]
pub(crate) struct Interner {
    map: HashMap<Box<str>, u32, BuildHasherDefault<FxHasher>>,
    names: Vec<Box<str>>,
}

impl Interner {
    /// The index of `name` and whether it is new.
    #[inline]
    pub(crate) fn get_or_insert(&mut self, name: &str) -> (u32, bool) {
        if let Some(&i) = self.map.get(name) {
            return (i, false);
        }
        let i = self.names.len() as u32;
        self.map.insert(name.into(), i);
        self.names.push(name.into());
        (i, true)
    }

    pub(crate) fn name(&self, i: u32) -> &str {
        &self.names[i as usize]
    }
}

/// An interner is saved as its names in index order; the map is rebuilt from them.
impl serde::Serialize for Interner {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        self.names.serialize(s)
    }
}

impl<'de> serde::Deserialize<'de> for Interner {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Interner, D::Error> {
        let names = Vec::<Box<str>>::deserialize(d)?;
        let mut interner = Interner::default();
        for name in names {
            if !interner.get_or_insert(&name).1 {
                return Err(serde::de::Error::custom(format!("name {name:?} appears twice")));
            }
        }
        Ok(interner)
    }
}

impl Interner {
    /// How many names there are.
    pub(crate) fn len(&self) -> usize {
        self.names.len()
    }
}
