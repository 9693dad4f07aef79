"""Camera calibration for the real cell: colour intrinsics per RealSense camera (`intrinsics`),
ChArUco board detection and pose (`charuco`), hand-eye transforms and the guided capture that
records their samples (`handeye`), and `onedp calibrate` (`cli`). calibration/README.md is the
user's guide: commands, file formats, frames."""
