//! Quantities with units. Mixing bytes with FLOPs or seconds is a type error.

use serde::{Deserialize, Serialize};
use std::fmt;
use std::iter::Sum;
use std::ops::{Add, AddAssign, Div, Mul, Sub};

/// A byte count (memory or traffic).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(transparent)]
pub struct Bytes(pub u64);

/// Floating-point operations (2 x multiply-adds for convs and linears).
#[derive(Clone, Copy, Debug, Default, PartialEq, PartialOrd, Serialize, Deserialize)]
#[serde(transparent)]
pub struct Flops(pub f64);

/// Wall-clock time.
#[derive(Clone, Copy, Debug, Default, PartialEq, PartialOrd, Serialize, Deserialize)]
#[serde(transparent)]
pub struct Seconds(pub f64);

pub const KIB: u64 = 1 << 10;
pub const MIB: u64 = 1 << 20;
pub const GIB: u64 = 1 << 30;

impl Bytes {
    pub const ZERO: Bytes = Bytes(0);
    pub fn as_gib(self) -> f64 {
        self.0 as f64 / GIB as f64
    }
    pub fn as_mib(self) -> f64 {
        self.0 as f64 / MIB as f64
    }
    pub fn saturating_sub(self, o: Bytes) -> Bytes {
        Bytes(self.0.saturating_sub(o.0))
    }
    /// Round up to a multiple of `quantum` (allocator block rounding).
    pub fn round_up(self, quantum: u64) -> Bytes {
        if quantum <= 1 {
            return self;
        }
        Bytes(self.0.div_ceil(quantum) * quantum)
    }
}

impl Flops {}

impl Seconds {
    /// In the unit that reads best, as reports print a time: `12.3 s`,
    /// `3.242 s`, `10.3 ms`, `85 µs`, `0 s`. (`Display` keeps a fixed
    /// seconds-or-milliseconds form for tables that line up.)
    pub fn readable(self) -> String {
        let s = self.0;
        if s == 0.0 {
            "0 s".into()
        } else if s >= 10.0 {
            format!("{s:.1} s")
        } else if s >= 1.0 {
            format!("{s:.3} s")
        } else if s >= 1e-3 {
            format!("{:.1} ms", s * 1e3)
        } else {
            format!("{:.0} µs", s * 1e6)
        }
    }
    pub fn max(self, o: Seconds) -> Seconds {
        if o.0 > self.0 {
            o
        } else {
            self
        }
    }
}

macro_rules! arith {
    ($t:ident, $inner:ty) => {
        impl Add for $t {
            type Output = $t;
            fn add(self, o: $t) -> $t {
                $t(self.0 + o.0)
            }
        }
        impl AddAssign for $t {
            fn add_assign(&mut self, o: $t) {
                self.0 += o.0;
            }
        }
        impl Sub for $t {
            type Output = $t;
            fn sub(self, o: $t) -> $t {
                $t(self.0 - o.0)
            }
        }
        impl Mul<$inner> for $t {
            type Output = $t;
            fn mul(self, k: $inner) -> $t {
                $t(self.0 * k)
            }
        }
        impl Div<$inner> for $t {
            type Output = $t;
            fn div(self, k: $inner) -> $t {
                $t(self.0 / k)
            }
        }
        impl Sum for $t {
            fn sum<I: Iterator<Item = $t>>(it: I) -> $t {
                it.fold($t::default(), |a, b| a + b)
            }
        }
        impl<'a> Sum<&'a $t> for $t {
            fn sum<I: Iterator<Item = &'a $t>>(it: I) -> $t {
                it.fold($t::default(), |a, b| a + *b)
            }
        }
    };
}
arith!(Bytes, u64);
arith!(Flops, f64);
arith!(Seconds, f64);

/// FLOPs over a rate gives time.
impl Div<FlopRate> for Flops {
    type Output = Seconds;
    fn div(self, r: FlopRate) -> Seconds {
        Seconds(self.0 / r.0)
    }
}

/// Bytes over a bandwidth gives time.
impl Div<Bandwidth> for Bytes {
    type Output = Seconds;
    fn div(self, b: Bandwidth) -> Seconds {
        Seconds(self.0 as f64 / b.0)
    }
}

/// FLOP/s.
#[derive(Clone, Copy, Debug, Default, PartialEq, PartialOrd, Serialize, Deserialize)]
#[serde(transparent)]
pub struct FlopRate(pub f64);

/// Bytes/s.
#[derive(Clone, Copy, Debug, Default, PartialEq, PartialOrd, Serialize, Deserialize)]
#[serde(transparent)]
pub struct Bandwidth(pub f64);

impl fmt::Display for Bytes {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let b = self.0 as f64;
        if self.0 >= GIB {
            write!(f, "{:.2} GiB", b / GIB as f64)
        } else if self.0 >= MIB {
            write!(f, "{:.1} MiB", b / MIB as f64)
        } else if self.0 >= KIB {
            write!(f, "{:.1} KiB", b / KIB as f64)
        } else {
            write!(f, "{} B", self.0)
        }
    }
}

impl fmt::Display for Seconds {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.0 >= 1.0 {
            write!(f, "{:.3} s", self.0)
        } else {
            write!(f, "{:.2} ms", self.0 * 1e3)
        }
    }
}

impl fmt::Display for Flops {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:.2} GFLOP", self.0 / 1e9)
    }
}

/// Element type of parameters or activations.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum DType {
    Fp32,
    Fp16,
    Bf16,
}

impl DType {
    pub fn size(self) -> u64 {
        match self {
            DType::Fp32 => 4,
            DType::Fp16 | DType::Bf16 => 2,
        }
    }
    pub fn name(self) -> &'static str {
        match self {
            DType::Fp32 => "fp32",
            DType::Fp16 => "fp16",
            DType::Bf16 => "bf16",
        }
    }
    pub fn parse(s: &str) -> Option<DType> {
        match s {
            "fp32" | "f32" | "float32" => Some(DType::Fp32),
            "fp16" | "f16" | "float16" | "half" => Some(DType::Fp16),
            "bf16" | "bfloat16" => Some(DType::Bf16),
            _ => None,
        }
    }
}

impl fmt::Display for DType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    #[test]
    fn seconds_read_in_the_unit_that_fits() {
        let r = |s: f64| Seconds(s).readable();
        assert_eq!([r(0.0), r(12.34), r(3.2421), r(0.01034), r(85.2e-6)], ["0 s", "12.3 s", "3.242 s", "10.3 ms", "85 µs"]);
    }

    #[test]
    fn unit_arithmetic_and_display() {
        assert_eq!(Bytes(3) + Bytes(4), Bytes(7));
        assert_eq!(Bytes(1000).round_up(512), Bytes(1024));
        assert_eq!(format!("{}", Bytes(3 * GIB / 2)), "1.50 GiB");
        assert_eq!((Flops(2e12) / FlopRate(1e12)).0, 2.0);
        assert_eq!((Bytes(1_000_000) / Bandwidth(1e6)).0, 1.0);
        assert_eq!(DType::parse("bf16"), Some(DType::Bf16));
        assert_eq!(DType::parse("int8"), None);
    }
}
