//! Compute backends: which are compiled in, and how to pick one at run time.
//!
//! Burn 0.22 has no backend type parameter; the backend is a run-time [`Device`]. The backends are
//! cargo features (`flex`, `ndarray`, `wgpu`, `cuda`); this module maps a name (CLI `--device`, config key
//! `device`, or the `ASTRO_DEVICE` environment variable) to a device of a compiled-in backend.

use std::fmt;
use std::str::FromStr;

use burn::tensor::Device;
use serde::{Deserialize, Serialize};
use thiserror::Error;

/// A compute backend astro can be built with.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum BackendKind {
    /// Burn's pure-Rust CPU backend (the default).
    Flex,
    /// Burn's ndarray CPU backend (deprecated upstream, kept for users who ask for it).
    Ndarray,
    /// GPUs through wgpu (Vulkan, Metal, DX12, WebGPU).
    Wgpu,
    /// NVIDIA GPUs through CUDA (the first device).
    Cuda,
}

/// A backend name that is unknown or not compiled into this binary.
#[derive(Debug, Error, Clone, PartialEq, Eq)]
pub enum DeviceError {
    /// The name is not a backend astro knows.
    #[error("unknown device `{0}`; expected one of: flex, ndarray, wgpu, cuda")]
    Unknown(String),
    /// The backend exists but this build does not include it.
    #[error("device `{0}` is not compiled into this build (compiled: {1}); rebuild with `--features {0}`")]
    NotCompiled(BackendKind, String),
    /// No backend feature was enabled at all.
    #[error("no compute backend is compiled in; build with `--features flex` (or ndarray, wgpu, cuda)")]
    NoneCompiled,
    /// The backend is compiled in but found no device to run on.
    #[error(
        "{0} found no usable device (the runtime reported: {1}); {hint}",
        hint = match .0 {
            BackendKind::Cuda => "install the NVIDIA driver (libcuda) or pick another device: --device wgpu or --device flex",
            _ => "install a Vulkan driver — your GPU vendor's, or Mesa's software renderer \
                  (Debian/Ubuntu: apt-get install mesa-vulkan-drivers libvulkan1) — or pick --device flex",
        }
    )]
    NoDevice(BackendKind, String),
    /// A device name with an index or kind its backend does not have.
    #[error(
        "device `{0}`: {1}; write flex, ndarray, wgpu (default adapter), wgpu:N (N-th discrete GPU), \
         wgpu:cpu (software adapter), cuda or cuda:N"
    )]
    BadOrdinal(String, String),
    /// A list of devices for data-parallel training that cannot be used together.
    #[error("devices `{0}`: {1}")]
    BadList(String, String),
}

/// Which device of a backend: its default one, the N-th, or (wgpu) the software adapter.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Ordinal {
    /// The backend's default device (wgpu: the best adapter; CUDA: device 0).
    Default,
    /// The N-th device (wgpu: the N-th discrete GPU; CUDA: device N).
    Index(usize),
    /// wgpu only: the software (CPU) adapter, e.g. Mesa's lavapipe.
    Cpu,
}

/// One device of one backend, as written on the command line: `wgpu`, `wgpu:1`, `wgpu:cpu`, `cuda:0`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct DeviceSpec {
    /// The backend.
    pub kind: BackendKind,
    /// Which of its devices.
    pub ordinal: Ordinal,
}

impl DeviceSpec {
    /// Opens the device (a GPU is tried once with one tiny operation; see [`BackendKind::device`]).
    pub fn open(self) -> Result<Device, DeviceError> {
        self.kind.check_compiled()?;
        #[allow(unreachable_code, unused_variables)]
        match (self.kind, self.ordinal) {
            (BackendKind::Flex, _) => {
                #[cfg(feature = "flex")]
                return Ok(Device::flex());
            }
            (BackendKind::Ndarray, _) => {
                #[cfg(feature = "ndarray")]
                #[allow(deprecated)]
                return Ok(Device::ndarray());
            }
            (BackendKind::Wgpu, ordinal) => {
                #[cfg(feature = "wgpu")]
                {
                    use burn::tensor::DeviceKind;
                    let which = match ordinal {
                        Ordinal::Default => DeviceKind::DefaultDevice,
                        Ordinal::Index(i) => DeviceKind::DiscreteGpu(i),
                        Ordinal::Cpu => DeviceKind::Cpu,
                    };
                    return probe(self.kind, move || Device::wgpu(which));
                }
            }
            (BackendKind::Cuda, ordinal) => {
                #[cfg(feature = "cuda")]
                {
                    let index = match ordinal {
                        Ordinal::Index(i) => i,
                        _ => 0,
                    };
                    return probe(self.kind, move || Device::cuda(index));
                }
            }
        }
        Err(DeviceError::NotCompiled(self.kind, String::new()))
    }

    /// A comma-separated list of distinct devices of one backend, for data-parallel training
    /// (`wgpu:0,wgpu:1`; on one machine with Mesa's software Vulkan, `wgpu,wgpu:cpu` are two).
    pub fn parse_list(list: &str) -> Result<Vec<DeviceSpec>, DeviceError> {
        let bad = |why: &str| DeviceError::BadList(list.to_string(), why.to_string());
        let specs = list.split(',').map(str::parse).collect::<Result<Vec<DeviceSpec>, _>>()?;
        let first = specs[0];
        if let Some(other) = specs.iter().find(|s| s.kind != first.kind) {
            return Err(bad(&format!(
                "{} and {} are different backends; data-parallel training uses devices of one backend",
                first.kind, other.kind
            )));
        }
        if specs.len() > 1 && matches!(first.kind, BackendKind::Flex | BackendKind::Ndarray) {
            return Err(bad(&format!(
                "{} is one device (it already uses every core); name one device, or GPUs (wgpu:0,wgpu:1 / cuda:0,cuda:1)",
                first.kind
            )));
        }
        for (i, s) in specs.iter().enumerate() {
            if specs[..i].contains(s) {
                return Err(bad(&format!("{s} is named twice; name each device once")));
            }
        }
        Ok(specs)
    }
}

impl fmt::Display for DeviceSpec {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.ordinal {
            Ordinal::Default => write!(f, "{}", self.kind),
            Ordinal::Index(i) => write!(f, "{}:{i}", self.kind),
            Ordinal::Cpu => write!(f, "{}:cpu", self.kind),
        }
    }
}

impl FromStr for DeviceSpec {
    type Err = DeviceError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let (name, which) = match s.trim().split_once(':') {
            Some((name, which)) => (name, Some(which.trim().to_ascii_lowercase())),
            None => (s.trim(), None),
        };
        let kind: BackendKind = name.parse()?;
        let bad = |why: String| DeviceError::BadOrdinal(s.trim().to_string(), why);
        let ordinal = match which.as_deref() {
            None => Ordinal::Default,
            Some(_) if matches!(kind, BackendKind::Flex | BackendKind::Ndarray) => {
                return Err(bad(format!("{kind} has one device and takes no index")));
            }
            Some("cpu") if kind == BackendKind::Wgpu => Ordinal::Cpu,
            Some(n) => Ordinal::Index(n.parse().map_err(|_| bad(format!("`{n}` is not a device index")))?),
        };
        Ok(DeviceSpec { kind, ordinal })
    }
}

impl BackendKind {
    /// All backends, in the order the default is chosen from.
    pub const ALL: [BackendKind; 4] = [BackendKind::Flex, BackendKind::Ndarray, BackendKind::Wgpu, BackendKind::Cuda];

    /// Whether this backend is compiled into the current build.
    pub fn is_compiled(self) -> bool {
        match self {
            BackendKind::Flex => cfg!(feature = "flex"),
            BackendKind::Ndarray => cfg!(feature = "ndarray"),
            BackendKind::Wgpu => cfg!(feature = "wgpu"),
            BackendKind::Cuda => cfg!(feature = "cuda"),
        }
    }

    /// The backends compiled into this build.
    pub fn compiled() -> Vec<BackendKind> {
        Self::ALL.into_iter().filter(|b| b.is_compiled()).collect()
    }

    /// The default backend: `$ASTRO_DEVICE` if set, else the first compiled of flex, ndarray, wgpu.
    pub fn default_kind() -> Result<BackendKind, DeviceError> {
        if let Ok(name) = std::env::var("ASTRO_DEVICE")
            && !name.is_empty()
        {
            let kind: BackendKind = name.parse()?;
            kind.check_compiled()?;
            return Ok(kind);
        }
        Self::compiled().into_iter().next().ok_or(DeviceError::NoneCompiled)
    }

    fn check_compiled(self) -> Result<(), DeviceError> {
        if self.is_compiled() {
            Ok(())
        } else {
            let list: Vec<String> = Self::compiled().iter().map(|b| b.to_string()).collect();
            let list = if list.is_empty() { "none".to_string() } else { list.join(", ") };
            Err(DeviceError::NotCompiled(self, list))
        }
    }

    /// The CPU backend whose generator draws the initial parameters of a model that runs on this
    /// backend (they are then moved to it): flex where compiled, else ndarray; `None` when neither
    /// is compiled (the device then draws its own). One seed, one model, on every backend.
    pub fn host(self) -> Option<BackendKind> {
        [BackendKind::Flex, BackendKind::Ndarray].into_iter().find(|b| b.is_compiled())
    }

    /// A device of this backend (the default adapter for wgpu, the first GPU for CUDA). A GPU
    /// backend is tried once here (one tiny operation), so that a machine without a usable device
    /// gets [`DeviceError::NoDevice`] now instead of a panic at the first operation.
    pub fn device(self) -> Result<Device, DeviceError> {
        DeviceSpec { kind: self, ordinal: Ordinal::Default }.open()
    }
}

impl fmt::Display for BackendKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            BackendKind::Flex => "flex",
            BackendKind::Ndarray => "ndarray",
            BackendKind::Wgpu => "wgpu",
            BackendKind::Cuda => "cuda",
        })
    }
}

impl FromStr for BackendKind {
    type Err = DeviceError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s.trim().to_ascii_lowercase().as_str() {
            "flex" | "cpu" => Ok(BackendKind::Flex),
            "ndarray" => Ok(BackendKind::Ndarray),
            "wgpu" | "gpu" => Ok(BackendKind::Wgpu),
            "cuda" => Ok(BackendKind::Cuda),
            _ => Err(DeviceError::Unknown(s.to_string())),
        }
    }
}

/// Opens a GPU device and runs one tiny operation on it. Burn's GPU runtimes panic when they find
/// no adapter or driver (at the first operation); the panic is caught here, without its message
/// on stderr, and becomes [`DeviceError::NoDevice`] with what the runtime said.
#[cfg(any(feature = "wgpu", feature = "cuda"))]
fn probe(kind: BackendKind, open: impl FnOnce() -> Device + std::panic::UnwindSafe) -> Result<Device, DeviceError> {
    let hook = std::panic::take_hook();
    std::panic::set_hook(Box::new(|_| {}));
    let result = std::panic::catch_unwind(|| {
        let device = open();
        let _ = burn::tensor::Tensor::<1>::zeros([1], &device).into_data();
        device
    });
    std::panic::set_hook(hook);
    result.map_err(|panic| {
        let said = panic
            .downcast_ref::<String>()
            .cloned()
            .or_else(|| panic.downcast_ref::<&str>().map(|s| s.to_string()))
            .unwrap_or_else(|| "the runtime gave no reason".to_string());
        DeviceError::NoDevice(kind, said.lines().next().unwrap_or_default().to_string())
    })
}

/// The default device: see [`BackendKind::default_kind`].
pub fn default_device() -> Result<Device, DeviceError> {
    BackendKind::default_kind()?.device()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_names_and_rejects_unknown() {
        assert_eq!("flex".parse::<BackendKind>().unwrap(), BackendKind::Flex);
        assert_eq!("NDArray".parse::<BackendKind>().unwrap(), BackendKind::Ndarray);
        let err = "tpu".parse::<BackendKind>().unwrap_err();
        assert!(err.to_string().contains("unknown device `tpu`"), "{err}");
    }

    #[test]
    fn flex_is_compiled_by_default() {
        assert!(BackendKind::Flex.is_compiled());
        assert!(BackendKind::Flex.device().is_ok());
    }

    #[test]
    fn parses_device_indices_and_lists() {
        let spec: DeviceSpec = "wgpu:1".parse().unwrap();
        assert_eq!(spec, DeviceSpec { kind: BackendKind::Wgpu, ordinal: Ordinal::Index(1) });
        assert_eq!("WGPU:CPU".parse::<DeviceSpec>().unwrap().ordinal, Ordinal::Cpu);
        assert_eq!("cuda".parse::<DeviceSpec>().unwrap().to_string(), "cuda");
        for (text, said) in [
            ("flex:1", "flex has one device"),
            ("cuda:x", "`x` is not a device index"),
            ("cuda:cpu", "`cpu` is not a device index"),
            ("tpu:0", "unknown device `tpu`"),
        ] {
            let err = text.parse::<DeviceSpec>().unwrap_err().to_string();
            assert!(err.contains(said), "{text}: {err}");
        }
        let list = DeviceSpec::parse_list("wgpu:0, wgpu:1").unwrap();
        assert_eq!(list.iter().map(|s| s.to_string()).collect::<Vec<_>>(), ["wgpu:0", "wgpu:1"]);
        for (text, said) in [
            ("wgpu,cuda", "different backends"),
            ("wgpu:1,wgpu:1", "wgpu:1 is named twice"),
            ("flex,flex", "flex is one device"),
            ("ndarray", ""),
        ] {
            match DeviceSpec::parse_list(text) {
                Ok(l) => assert!(said.is_empty() && l.len() == 1, "{text}"),
                Err(e) => assert!(e.to_string().contains(said), "{text}: {e}"),
            }
        }
    }

    #[cfg(not(feature = "wgpu"))]
    #[test]
    fn missing_backend_names_the_feature() {
        let err = BackendKind::Wgpu.device().unwrap_err().to_string();
        assert!(err.contains("--features wgpu"), "{err}");
    }
}
