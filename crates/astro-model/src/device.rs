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
        self.check_compiled()?;
        #[allow(unreachable_code)]
        match self {
            BackendKind::Flex => {
                #[cfg(feature = "flex")]
                return Ok(Device::flex());
            }
            BackendKind::Ndarray => {
                #[cfg(feature = "ndarray")]
                #[allow(deprecated)]
                return Ok(Device::ndarray());
            }
            BackendKind::Wgpu => {
                #[cfg(feature = "wgpu")]
                return probe(self, || Device::wgpu(burn::tensor::DeviceKind::DefaultDevice));
            }
            BackendKind::Cuda => {
                #[cfg(feature = "cuda")]
                return probe(self, || Device::cuda(0));
            }
        }
        Err(DeviceError::NotCompiled(self, String::new()))
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

    #[cfg(not(feature = "wgpu"))]
    #[test]
    fn missing_backend_names_the_feature() {
        let err = BackendKind::Wgpu.device().unwrap_err().to_string();
        assert!(err.contains("--features wgpu"), "{err}");
    }
}
