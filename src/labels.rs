//! Label maps: what each stored mask value means as a class index, applied as masks are read
//! (`--label-map 'SRC:DST,…'`, ranges `0-6:255`, the presets `cityscapes` and
//! `reduce_zero_label`), and the class lists of the dataset layouts segtune knows.

use std::fmt;

use crate::IGNORE_INDEX;

/// A mapping of every 8-bit mask value to a class index (or [`IGNORE_INDEX`]).
#[derive(Clone, Copy, PartialEq, Eq)]
pub struct LabelMap {
    table: [u8; 256],
}

impl Default for LabelMap {
    fn default() -> Self {
        Self::IDENTITY
    }
}

impl LabelMap {
    /// Every value is itself.
    pub const IDENTITY: LabelMap = {
        let mut table = [0u8; 256];
        let mut i = 0;
        while i < 256 {
            table[i] = i as u8;
            i += 1;
        }
        LabelMap { table }
    };

    /// The class of stored value `v`.
    #[inline]
    pub fn get(&self, v: u8) -> u8 {
        self.table[v as usize]
    }

    pub fn is_identity(&self) -> bool {
        *self == Self::IDENTITY
    }

    /// `self` after `first`: the value `first` gives, mapped by `self`.
    pub fn after(&self, first: &LabelMap) -> LabelMap {
        let mut table = [0u8; 256];
        for (v, t) in table.iter_mut().enumerate() {
            *t = self.get(first.get(v as u8));
        }
        LabelMap { table }
    }

    /// Cityscapes' labelIds (0–33, and −1 stored as 255) to its 19 trainIds, 255 elsewhere, as
    /// cityscapesScripts' `labels.py` defines them.
    pub fn cityscapes() -> LabelMap {
        let mut m = LabelMap { table: [IGNORE_INDEX; 256] };
        for (id, train) in CITYSCAPES_TRAIN_IDS {
            m.table[id as usize] = train;
        }
        m
    }

    /// ADE20K's (MMSeg's) `reduce_zero_label`: 0 ("other") → 255, k → k − 1, 255 stays.
    pub fn reduce_zero_label() -> LabelMap {
        let mut m = LabelMap { table: [IGNORE_INDEX; 256] };
        for v in 1..255 {
            m.table[v] = (v - 1) as u8;
        }
        m
    }

    fn entries(&self) -> impl Iterator<Item = (u8, u8)> + '_ {
        (0..=255u8).map(|v| (v, self.get(v))).filter(|(v, t)| v != t)
    }
}

/// labelId → trainId of Cityscapes' 19 evaluated classes (every other labelId is ignored).
pub const CITYSCAPES_TRAIN_IDS: [(u8, u8); 19] = [
    (7, 0),
    (8, 1),
    (11, 2),
    (12, 3),
    (13, 4),
    (17, 5),
    (19, 6),
    (20, 7),
    (21, 8),
    (22, 9),
    (23, 10),
    (24, 11),
    (25, 12),
    (26, 13),
    (27, 14),
    (28, 15),
    (31, 16),
    (32, 17),
    (33, 18),
];

/// Cityscapes' 19 trainId classes.
pub const CITYSCAPES_CLASSES: [&str; 19] = [
    "road",
    "sidewalk",
    "building",
    "wall",
    "fence",
    "pole",
    "traffic light",
    "traffic sign",
    "vegetation",
    "terrain",
    "sky",
    "person",
    "rider",
    "car",
    "truck",
    "bus",
    "train",
    "motorcycle",
    "bicycle",
];

/// ADE20K's (SceneParsing, ADEChallengeData2016) 150 classes, after `reduce_zero_label`.
pub const ADE20K_CLASSES: [&str; 150] = [
    "wall",
    "building",
    "sky",
    "floor",
    "tree",
    "ceiling",
    "road",
    "bed",
    "windowpane",
    "grass",
    "cabinet",
    "sidewalk",
    "person",
    "earth",
    "door",
    "table",
    "mountain",
    "plant",
    "curtain",
    "chair",
    "car",
    "water",
    "painting",
    "sofa",
    "shelf",
    "house",
    "sea",
    "mirror",
    "rug",
    "field",
    "armchair",
    "seat",
    "fence",
    "desk",
    "rock",
    "wardrobe",
    "lamp",
    "bathtub",
    "railing",
    "cushion",
    "base",
    "box",
    "column",
    "signboard",
    "chest of drawers",
    "counter",
    "sand",
    "sink",
    "skyscraper",
    "fireplace",
    "refrigerator",
    "grandstand",
    "path",
    "stairs",
    "runway",
    "case",
    "pool table",
    "pillow",
    "screen door",
    "stairway",
    "river",
    "bridge",
    "bookcase",
    "blind",
    "coffee table",
    "toilet",
    "flower",
    "book",
    "hill",
    "bench",
    "countertop",
    "stove",
    "palm",
    "kitchen island",
    "computer",
    "swivel chair",
    "boat",
    "bar",
    "arcade machine",
    "hovel",
    "bus",
    "towel",
    "light",
    "truck",
    "tower",
    "chandelier",
    "awning",
    "streetlight",
    "booth",
    "television receiver",
    "airplane",
    "dirt track",
    "apparel",
    "pole",
    "land",
    "bannister",
    "escalator",
    "ottoman",
    "bottle",
    "buffet",
    "poster",
    "stage",
    "van",
    "ship",
    "fountain",
    "conveyer belt",
    "canopy",
    "washer",
    "plaything",
    "swimming pool",
    "stool",
    "barrel",
    "basket",
    "waterfall",
    "tent",
    "bag",
    "minibike",
    "cradle",
    "oven",
    "ball",
    "food",
    "step",
    "tank",
    "trade name",
    "microwave",
    "pot",
    "animal",
    "bicycle",
    "lake",
    "dishwasher",
    "screen",
    "blanket",
    "sculpture",
    "hood",
    "sconce",
    "vase",
    "traffic light",
    "tray",
    "ashcan",
    "fan",
    "pier",
    "crt screen",
    "plate",
    "monitor",
    "bulletin board",
    "shower",
    "radiator",
    "glass",
    "clock",
    "flag",
];

impl std::str::FromStr for LabelMap {
    type Err = String;

    /// `SRC:DST` pairs separated by commas, where SRC is a value or an inclusive range `A-B`
    /// (`255:1`, `0-6:255,7:0`), applied left to right, or a preset: `cityscapes` (labelIds to
    /// trainIds), `reduce_zero_label` (ADE20K's), `identity`.
    fn from_str(s: &str) -> Result<Self, String> {
        let spec = s.trim();
        match spec {
            "cityscapes" => return Ok(Self::cityscapes()),
            "reduce_zero_label" => return Ok(Self::reduce_zero_label()),
            "identity" | "" => return Ok(Self::IDENTITY),
            _ => {}
        }
        let value = |t: &str| {
            t.trim()
                .parse::<u8>()
                .map_err(|_| format!("--label-map {spec:?}: expected a value 0–255, found {:?}", t.trim()))
        };
        let mut m = Self::IDENTITY;
        for pair in spec.split(',') {
            let (src, dst) = pair.split_once(':').ok_or_else(|| {
                format!("--label-map {spec:?}: expected SRC:DST (e.g. 255:1 or 0-6:255), found {pair:?}")
            })?;
            let dst = value(dst)?;
            let (lo, hi) = match src.split_once('-') {
                Some((a, b)) => (value(a)?, value(b)?),
                None => (value(src)?, value(src)?),
            };
            if lo > hi {
                return Err(format!("--label-map {spec:?}: range {lo}-{hi} is empty"));
            }
            for v in lo..=hi {
                m.table[v as usize] = dst;
            }
        }
        Ok(m)
    }
}

impl fmt::Display for LabelMap {
    /// The map as `SRC:DST` pairs, runs of values with one target written as ranges
    /// (`identity` when it maps nothing); parsing it gives the same map.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.is_identity() {
            return f.write_str("identity");
        }
        let mut parts: Vec<String> = vec![];
        let entries: Vec<(u8, u8)> = self.entries().collect();
        let mut i = 0;
        while i < entries.len() {
            let (start, dst) = entries[i];
            let mut j = i;
            while j + 1 < entries.len() && entries[j + 1].1 == dst && entries[j + 1].0 == entries[j].0 + 1 {
                j += 1;
            }
            let end = entries[j].0;
            parts.push(if end == start { format!("{start}:{dst}") } else { format!("{start}-{end}:{dst}") });
            i = j + 1;
        }
        f.write_str(&parts.join(","))
    }
}

impl fmt::Debug for LabelMap {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "LabelMap({self})")
    }
}

impl serde::Serialize for LabelMap {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> serde::Deserialize<'de> for LabelMap {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        String::deserialize(d)?.parse().map_err(serde::de::Error::custom)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pairs_ranges_and_presets_parse_and_print_back() {
        let m: LabelMap = "255:1".parse().unwrap();
        assert_eq!((m.get(255), m.get(0), m.get(7)), (1, 0, 7));
        let m: LabelMap = "0-6:255, 7:0".parse().unwrap();
        assert_eq!((m.get(0), m.get(6), m.get(7), m.get(8)), (255, 255, 0, 8));
        assert_eq!(m.to_string(), "0-6:255,7:0");
        assert_eq!(m.to_string().parse::<LabelMap>().unwrap(), m);
        assert_eq!("identity".parse::<LabelMap>().unwrap().to_string(), "identity");
        for bad in ["255", "1:300", "a:1", "9-3:0"] {
            assert!(bad.parse::<LabelMap>().is_err(), "{bad}");
        }
        let c = LabelMap::cityscapes();
        assert_eq!((c.get(7), c.get(26), c.get(33), c.get(0), c.get(34), c.get(255)), (0, 13, 18, 255, 255, 255));
        assert_eq!(c.to_string().parse::<LabelMap>().unwrap(), c);
        let r = LabelMap::reduce_zero_label();
        assert_eq!((r.get(0), r.get(1), r.get(150), r.get(255)), (255, 0, 149, 255));
        // Composition: the layout's map first, then the user's.
        let merged = "13-15:13".parse::<LabelMap>().unwrap().after(&c);
        assert_eq!((merged.get(26), merged.get(27), merged.get(28), merged.get(7)), (13, 13, 13, 0));
    }
}
