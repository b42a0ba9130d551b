"""Image reading and writing with full geometry, and grid checks.

Arrays are ``(z, y, x)`` as SimpleITK gives them. Geometry is kept in ITK's LPS convention
(``origin`` and ``direction`` as SimpleITK reports them); :meth:`Geometry.index_to_lps` and
:meth:`Geometry.index_to_ras` map a voxel to its physical point so that callers never redo the
LPS/RAS sign flip by hand.
"""
from __future__ import annotations

import gzip
import os
import shutil
import struct
import tempfile
import zlib
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Iterable, Iterator, Mapping, Sequence

import numpy as np
import SimpleITK as sitk

SUPPORTED_SUFFIXES = (".nii", ".nii.gz", ".nrrd", ".seg.nrrd", ".mha", ".mhd")


class ImageIOError(ValueError):
    """A file could not be read or written as an image; the message says what to do."""


class GeometryMismatchError(ValueError):
    """Two images that must share a voxel grid do not; the message names the property."""


@dataclass(frozen=True)
class Geometry:
    """Voxel grid of an image.

    ``shape_zyx``: array shape (z, y, x). ``spacing``: (x, y, z) in mm. ``origin``: LPS position of
    voxel (0, 0, 0) in mm. ``direction``: 3×3 row-major cosine matrix (ITK), columns are the
    i, j, k axes.
    """

    shape_zyx: tuple[int, int, int]
    spacing: tuple[float, float, float]
    origin: tuple[float, float, float]
    direction: tuple[float, ...]

    def __post_init__(self) -> None:
        if len(self.shape_zyx) != 3 or len(self.spacing) != 3 or len(self.origin) != 3:
            raise ValueError(f"Geometry needs 3-D shape/spacing/origin, got {self}")
        if len(self.direction) != 9:
            raise ValueError(f"Geometry.direction needs 9 values, got {len(self.direction)}")
        if any(s <= 0 for s in self.spacing):
            raise ValueError(f"Geometry.spacing must be positive, got {self.spacing}")

    @property
    def direction_matrix(self) -> np.ndarray:
        return np.asarray(self.direction, dtype=float).reshape(3, 3)

    @property
    def shape_xyz(self) -> tuple[int, int, int]:
        z, y, x = self.shape_zyx
        return (x, y, z)

    def index_to_lps(self, ijk: Sequence[float]) -> np.ndarray:
        """Physical LPS point (mm) of continuous index ``ijk`` given in (i, j, k) = (x, y, z) order."""
        ijk = np.asarray(ijk, dtype=float)
        return np.asarray(self.origin) + self.direction_matrix @ (np.asarray(self.spacing) * ijk)

    def index_to_ras(self, ijk: Sequence[float]) -> np.ndarray:
        """Physical RAS point (mm) of index ``ijk`` (i, j, k); RAS = LPS with x and y negated."""
        return self.index_to_lps(ijk) * np.array([-1.0, -1.0, 1.0])

    def ijk_to_ras_matrix(self) -> np.ndarray:
        """4×4 homogeneous IJK→RAS matrix, as MRML volume nodes store it."""
        m = np.eye(4)
        flip = np.diag([-1.0, -1.0, 1.0])
        m[:3, :3] = flip @ self.direction_matrix @ np.diag(self.spacing)
        m[:3, 3] = flip @ np.asarray(self.origin)
        return m

    @classmethod
    def from_ijk_to_ras_matrix(cls, matrix: np.ndarray, shape_zyx: Sequence[int]) -> "Geometry":
        """Inverse of :meth:`ijk_to_ras_matrix` (used by the Slicer glue)."""
        matrix = np.asarray(matrix, dtype=float)
        flip = np.diag([-1.0, -1.0, 1.0])
        lin = flip @ matrix[:3, :3]
        spacing = np.linalg.norm(lin, axis=0)
        direction = lin / spacing
        origin = flip @ matrix[:3, 3]
        return cls(tuple(int(s) for s in shape_zyx), tuple(float(s) for s in spacing),
                   tuple(float(o) for o in origin), tuple(float(d) for d in direction.ravel()))

    @classmethod
    def from_sitk(cls, image: sitk.Image) -> "Geometry":
        size = image.GetSize()
        return cls((int(size[2]), int(size[1]), int(size[0])), tuple(image.GetSpacing()),
                   tuple(image.GetOrigin()), tuple(image.GetDirection()))

    def apply_to(self, image: sitk.Image) -> sitk.Image:
        image.SetSpacing(self.spacing)
        image.SetOrigin(self.origin)
        image.SetDirection(self.direction)
        return image

    def to_dict(self) -> dict:
        return {"shape_zyx": list(self.shape_zyx), "spacing": list(self.spacing),
                "origin": list(self.origin), "direction": list(self.direction)}


@dataclass
class Image:
    """A ``(z, y, x)`` array and its :class:`Geometry`."""

    array_zyx: np.ndarray
    geometry: Geometry

    def __post_init__(self) -> None:
        if tuple(self.array_zyx.shape) != tuple(self.geometry.shape_zyx):
            raise ValueError(f"array shape {self.array_zyx.shape} does not match geometry "
                             f"{self.geometry.shape_zyx}")


def _has_supported_suffix(path: Path) -> bool:
    name = path.name.lower()
    return any(name.endswith(s) for s in SUPPORTED_SUFFIXES)


#: NIfTI datatype codes of real floating-point voxels (the only ones that can hold NaN/inf) → numpy type.
_NIFTI_FLOAT_TYPES = {16: "f4", 64: "f8"}


#: Largest |intensity| read as float32: the square (variances, normalisation) must stay finite.
MAX_ABS_INTENSITY = 1e18

#: NIfTI datatype code → bytes per voxel (the types SimpleITK reads).
_NIFTI_ITEMSIZE = {2: 1, 4: 2, 8: 4, 16: 4, 64: 8, 256: 1, 512: 2, 768: 4, 1024: 8, 1280: 8, 32: 8, 1792: 16,
                   128: 3, 2304: 4}


@dataclass(frozen=True)
class _NiftiHeader:
    endian: str
    dims: tuple[int, ...]      # sizes of the used dimensions (x, y, z, ...)
    datatype: int
    itemsize: int
    vox_offset: int

    @property
    def n_voxels(self) -> int:
        return int(np.prod([max(int(d), 1) for d in self.dims], dtype=np.float64))

    @property
    def data_bytes(self) -> int:
        return self.n_voxels * self.itemsize


def _nifti_header(head: bytes) -> "_NiftiHeader | None":
    """The fields of a NIfTI-1/-2 header (either byte order) that say how much data follows; None
    when the bytes are not a NIfTI header this code understands."""
    if len(head) < 348:
        return None
    for endian in ("<", ">"):
        sizeof_hdr = struct.unpack(endian + "i", head[:4])[0]
        if sizeof_hdr in (348, 540):
            break
    else:
        return None
    if sizeof_hdr == 348:
        dim = struct.unpack(endian + "8h", head[40:56])
        datatype, bitpix = struct.unpack(endian + "2h", head[70:74])
        vox_offset = struct.unpack(endian + "f", head[108:112])[0]
    else:
        if len(head) < 540:
            return None
        datatype, bitpix = struct.unpack(endian + "2h", head[12:16])
        dim = struct.unpack(endian + "8q", head[16:80])
        vox_offset = struct.unpack(endian + "q", head[168:176])[0]
    if not 1 <= dim[0] <= 7 or any(int(d) < 0 for d in dim[1:dim[0] + 1]):
        return None
    itemsize = _NIFTI_ITEMSIZE.get(int(datatype)) or (int(bitpix) // 8 if bitpix > 0 else 0)
    if itemsize <= 0 or not np.isfinite(vox_offset):
        return None
    return _NiftiHeader(endian, tuple(int(d) for d in dim[1:dim[0] + 1]), int(datatype), itemsize,
                        max(int(vox_offset), sizeof_hdr))


def available_memory_bytes() -> int | None:
    """Memory the system can still give this process (MemAvailable on Linux); None when unknown."""
    try:
        with open("/proc/meminfo") as fh:
            for line in fh:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    try:
        return int(os.sysconf("SC_AVPHYS_PAGES")) * int(os.sysconf("SC_PAGE_SIZE"))
    except (ValueError, OSError, AttributeError):
        return None


def _describe_dims(dims: Sequence[int]) -> str:
    return "×".join(str(d) for d in dims)


def check_nifti_complete(path: str | os.PathLike, check_memory: bool = True) -> None:
    """Refuse a NIfTI file whose voxel data is shorter than its header says, or whose gzip stream
    ends early, with :class:`ImageIOError` — SimpleITK reads such files without a word and fills the
    missing voxels with 0. With ``check_memory``, also refuse a header whose voxels would not fit in
    the memory still available (before any of it is allocated). Other formats are left to their
    readers (NRRD and MetaImage readers raise on short data)."""
    path = Path(path)
    name = path.name.lower()
    if not (name.endswith(".nii") or name.endswith(".nii.gz")):
        return
    gz = name.endswith(".gz")
    try:
        with (gzip.open if gz else open)(path, "rb") as fh:
            head = fh.read(540)
    except (OSError, EOFError):
        return  # not even a header: SimpleITK's reader says what is wrong
    hdr = _nifti_header(head)
    if hdr is None:
        return  # not understood here: SimpleITK decides
    if check_memory:
        need = hdr.n_voxels * (hdr.itemsize + 4)  # the stored array and its float32 copy
        avail = available_memory_bytes()
        if avail is not None and need > avail:
            raise ImageIOError(f"{path}: its header claims {_describe_dims(hdr.dims)} voxels ({need / 2**30:.1f} GiB "
                               f"to read), more than the {avail / 2**30:.1f} GiB of memory available; check that the "
                               "file is the image you meant (a damaged header?) or use a machine with more memory")
    expected = hdr.vox_offset + hdr.data_bytes
    if gz:
        total = 0
        try:
            with gzip.open(path, "rb") as fh:
                while True:
                    block = fh.read(1 << 16)
                    if not block:
                        break
                    total += len(block)
        except EOFError:
            raise ImageIOError(f"{path} is truncated: its gzip stream ends early after {total} of {expected} bytes "
                               f"(header: {_describe_dims(hdr.dims)} voxels). Copy or export the file again.") from None
        except (OSError, zlib.error) as exc:
            raise ImageIOError(f"{path} is damaged: its gzip stream cannot be read ({exc}). "
                               "Copy or export the file again.") from exc
    else:
        total = path.stat().st_size
    if total < expected:
        raise ImageIOError(f"{path} is truncated: its header claims {_describe_dims(hdr.dims)} voxels "
                           f"({expected} bytes with the header) but the file holds {total} bytes. "
                           "Copy or export the file again.")


def _nifti_nonfinite_count(path: Path, chunk_bytes: int = 1 << 24) -> int:
    """Number of NaN/inf voxels stored in a float NIfTI file (0 for integer types).

    Needed because the NIfTI reader inside ITK/SimpleITK silently replaces NaN and inf by 0, so the
    array it returns cannot show them. Reads the header (NIfTI-1 or -2, either byte order) and scans
    the voxel data in chunks; returns 0 when the header is not understood (SimpleITK read it, so
    that only means an exotic variant, not a reason to refuse the file).
    """
    opener = gzip.open if path.name.lower().endswith(".gz") else open
    with opener(path, "rb") as fh:
        head = fh.read(540)
        if len(head) < 348:
            return 0
        for endian in ("<", ">"):
            sizeof_hdr = struct.unpack(endian + "i", head[:4])[0]
            if sizeof_hdr in (348, 540):
                break
        else:
            return 0
        if sizeof_hdr == 348:
            dim = struct.unpack(endian + "8h", head[40:56])
            datatype = struct.unpack(endian + "h", head[70:72])[0]
            vox_offset = int(struct.unpack(endian + "f", head[108:112])[0])
        else:
            if len(head) < 540:
                return 0
            datatype = struct.unpack(endian + "h", head[12:14])[0]
            dim = struct.unpack(endian + "8q", head[16:80])
            vox_offset = int(struct.unpack(endian + "q", head[168:176])[0])
        if datatype not in _NIFTI_FLOAT_TYPES or not 1 <= dim[0] <= 7:
            return 0
        n_voxels = int(np.prod([max(int(d), 1) for d in dim[1:dim[0] + 1]]))
        dt = np.dtype(endian + _NIFTI_FLOAT_TYPES[datatype])
        fh.seek(vox_offset)
        remaining = n_voxels * dt.itemsize
        chunk_bytes -= chunk_bytes % dt.itemsize
        bad = 0
        while remaining > 0:
            block = fh.read(min(chunk_bytes, remaining))
            if not block:
                break
            block = block[:len(block) - len(block) % dt.itemsize]
            bad += int(np.count_nonzero(~np.isfinite(np.frombuffer(block, dtype=dt))))
            remaining -= len(block)
        return bad


def read_image(path: str | os.PathLike, dtype: np.dtype | None = np.float32) -> Image:
    """Read a 3-D NIfTI, NRRD or MHA file; ``dtype=None`` keeps the stored pixel type.

    A file with NaN or inf voxels is refused with :class:`ImageIOError` (for NIfTI this needs a look at
    the raw data, because SimpleITK's NIfTI reader turns them into 0 without a word, which would make
    them look like background).
    """
    path = Path(path)
    if not path.exists():
        raise ImageIOError(f"Image file not found: {path}")
    if path.is_dir():
        raise ImageIOError(f"{path} is a folder; give the image file itself (.nii.gz, .nrrd, .mha). "
                           "DICOM series: load them in Slicer and save as NRRD or NIfTI first.")
    if not _has_supported_suffix(path):
        raise ImageIOError(f"Unsupported image format: {path.name}. Use one of {', '.join(SUPPORTED_SUFFIXES)}.")
    check_nifti_complete(path)
    try:
        img = sitk.ReadImage(str(path))
    except RuntimeError as exc:
        reason = str(exc).strip().splitlines()[-1]
        if "No such file" in reason:  # ITK's words for a MetaImage whose data part is cut short: the file is there
            reason = "its voxel data could not be read completely"
        raise ImageIOError(f"Could not read {path} as an image ({reason}). "
                           "Is the file complete and in the format its name says?") from exc
    if img.GetDimension() != 3:
        raise ImageIOError(f"{path} has {img.GetDimension()} dimensions; a 3-D volume is needed.")
    if img.GetNumberOfComponentsPerPixel() != 1:
        raise ImageIOError(f"{path} has {img.GetNumberOfComponentsPerPixel()} components per voxel; "
                           "give one scalar volume per channel.")
    array = sitk.GetArrayFromImage(img)
    n_bad = 0
    if np.issubdtype(array.dtype, np.floating):
        n_bad = int(np.count_nonzero(~np.isfinite(array)))
        name = path.name.lower()
        # NaN/inf became exact zeros in a NIfTI; without any zero there is nothing to look for.
        if n_bad == 0 and (name.endswith(".nii") or name.endswith(".nii.gz")) and not array.all():
            n_bad = _nifti_nonfinite_count(path)
    if n_bad:
        raise ImageIOError(f"{path} contains {n_bad} NaN/inf voxel(s); they are not valid intensities. Replace "
                           "them first (e.g. with 0 outside the brain, or re-export the image without them).")
    if dtype is not None and np.issubdtype(np.dtype(dtype), np.floating) and array.size:
        big = float(np.max(np.abs(array))) if np.issubdtype(array.dtype, np.floating) else 0.0
        if big > MAX_ABS_INTENSITY:
            limit = float(np.finfo(dtype).max)
            where = (f"beyond the {np.dtype(dtype).name} range (limit {limit:.3g})" if big > limit else
                     f"beyond what {np.dtype(dtype).name} arithmetic handles (squares overflow above {MAX_ABS_INTENSITY:.0e})")
            raise ImageIOError(f"{path} holds values {where}: the largest |value| is {big:.3g}. Rescale the image "
                               "(e.g. to its original units) and save it again")
    if dtype is not None:
        array = array.astype(dtype, copy=False)
    return Image(array, Geometry.from_sitk(img))


def check_output_paths(outputs: Mapping[str, str | os.PathLike], inputs: Iterable[str | os.PathLike | None], *,
                       formats: Sequence[str] | None = SUPPORTED_SUFFIXES) -> dict[str, Path]:
    """Check output file names before any work is done, so a typo costs nothing and writes nothing.

    ``outputs``: {what (e.g. the flag "--output"): path}. Each must end in one of ``formats`` (None:
    any name), must not be one of ``inputs`` (same file, also through a link: inputs are never
    overwritten), and no two may be the same file. Raises ``ValueError``; returns {what: Path}.
    """
    ins = [Path(i) for i in inputs if i]
    out: dict[str, Path] = {}
    for what, value in outputs.items():
        path = Path(value)
        if formats is not None and not any(path.name.lower().endswith(s) for s in formats):
            raise ValueError(f"{what} {path.name}: unsupported format; use one of {', '.join(formats)}")
        if path.exists() and any(i.exists() and os.path.samefile(path, i) for i in ins):
            raise ValueError(f"{what} {path} is also an input; choose another file name")
        _check_writable_folder(path, what)
        for other_what, other in out.items():
            if path.resolve() == other.resolve():
                raise ValueError(f"{what} and {other_what} are the same file {path}; the outputs need different names")
        out[what] = path
    return out


def _check_writable_folder(path: Path, what: str = "output") -> None:
    """Raise ``ValueError`` when ``path``'s folder cannot exist or be written (checked on the nearest
    existing ancestor, since missing folders are created)."""
    parent = path.absolute().parent
    while not parent.exists() and parent != parent.parent:
        parent = parent.parent
    if not parent.is_dir():
        raise ValueError(f"{what} {path}: {parent} is a file, not a folder; choose another output path")
    if not os.access(parent, os.W_OK | os.X_OK):
        raise ValueError(f"{what} {path}: the folder {parent} is not writable; choose a folder you can write to")


def _make_parent(path: Path) -> None:
    """Create ``path``'s folder, turning the OS error into a message that says what to do."""
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise ImageIOError(f"cannot create the folder of {path} ({exc.strerror or exc}); choose an output "
                           "path in a folder you can write to") from exc


def default_file_mode() -> int:
    """Permissions of an ordinary new file under the current umask (``mkstemp`` alone gives 0600)."""
    mask = os.umask(0)
    os.umask(mask)
    return 0o666 & ~mask


@contextmanager
def atomic_write(path: str | os.PathLike, mode: str = "w", *, fsync: bool = False,
                 newline: str | None = None) -> Iterator[IO]:
    """Open a temporary file beside ``path`` for writing; it replaces ``path`` only when the block ends
    without an exception, so a crash or a cancel never leaves half a file (and never damages an
    existing one). On an exception the temporary file is removed. The result gets the permissions of
    an ordinary new file. ``fsync``: flush to disk before the rename (checkpoints)."""
    path = Path(path)
    _make_parent(path)
    try:
        fd, tmp = tempfile.mkstemp(prefix=".tmp-" + path.name + "-", dir=path.parent)
    except OSError as exc:
        raise ImageIOError(f"cannot write {path} ({exc.strerror or exc}); choose a folder you can write to") from exc
    try:
        with os.fdopen(fd, mode, **({} if "b" in mode else {"newline": newline})) as fh:
            yield fh
            fh.flush()
            if fsync:
                os.fsync(fh.fileno())
        os.chmod(tmp, default_file_mode())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def to_sitk(array_zyx: np.ndarray, geometry: Geometry) -> sitk.Image:
    if tuple(array_zyx.shape) != tuple(geometry.shape_zyx):
        raise ValueError(f"array shape {array_zyx.shape} does not match geometry {geometry.shape_zyx}")
    return geometry.apply_to(sitk.GetImageFromArray(np.ascontiguousarray(array_zyx)))


def _prepare_array(array_zyx: np.ndarray) -> np.ndarray:
    array = np.asarray(array_zyx)
    if array.dtype == np.bool_:
        array = array.astype(np.uint8)
    if array.dtype == np.float64:
        array = array.astype(np.float32)
    return array


def _verify_image_file(tmp: str, path: Path, array: np.ndarray, geometry: Geometry) -> None:
    """Read a just-written image back and compare it with what was meant to be written: SimpleITK's
    writers do not raise on a short write (a full disk, a file-size limit), so the file on disk is the
    only proof. Raises :class:`ImageIOError`."""
    hint = "check the free space (and any file-size limit) of the folder; nothing was replaced"
    try:
        check_nifti_complete(tmp, check_memory=False)
        back = sitk.ReadImage(tmp)
    except (ImageIOError, RuntimeError) as exc:
        detail = str(exc).strip().splitlines()[-1] if str(exc).strip() else type(exc).__name__
        detail = detail.replace(f"{tmp} ", "").replace(" Copy or export the file again.", "")  # input advice, not ours
        raise ImageIOError(f"could not write {path}: the file did not read back complete ({detail[:200]}); {hint}") from exc
    expected = array
    if np.issubdtype(array.dtype, np.floating) and path.name.lower().endswith((".nii", ".nii.gz")):
        expected = np.where(np.isfinite(array), array, 0)  # ITK's NIfTI reader returns NaN/inf as 0
    if tuple(back.GetSize()) != tuple(geometry.shape_xyz) or not np.array_equal(
            sitk.GetArrayViewFromImage(back), expected, equal_nan=np.issubdtype(array.dtype, np.floating)):
        raise ImageIOError(f"could not write {path}: the file read back differs from the data written; {hint}")


class StagedWrites:
    """Several output files written together: each is written under a temporary name beside its
    target and verified (images are read back), and only when all are good are they renamed into
    place, in the order they were added (put the file that marks completion last). On an error
    nothing is renamed and every temporary file is removed, so a failed run leaves no file under a
    final name and never replaces a good file with a bad one. Use as a context manager (commits at
    the end of the block unless it raised) or call :meth:`commit` / :meth:`discard`."""

    def __init__(self) -> None:
        self._tmp_dirs: list[str] = []
        self._moves: list[tuple[str, Path]] = []

    def _tmp_dir(self, path: Path) -> str:
        _make_parent(path)
        try:
            d = tempfile.mkdtemp(prefix=".tmp-" + path.name.split(".")[0] + "-", dir=path.parent)
        except OSError as exc:
            raise ImageIOError(f"cannot write {path} ({exc.strerror or exc}); choose a folder you can write to") from exc
        self._tmp_dirs.append(d)
        return d

    def image(self, path: str | os.PathLike, array_zyx: np.ndarray, geometry: Geometry, compress: bool = True) -> Path:
        path = Path(path)
        if not _has_supported_suffix(path):
            raise ImageIOError(f"Unsupported output format: {path.name}. Use one of {', '.join(SUPPORTED_SUFFIXES)}.")
        array = _prepare_array(array_zyx)
        tmp_dir = self._tmp_dir(path)
        # Written under its final name inside the temporary folder: a MetaImage header (.mhd) names its
        # data file (.raw/.zraw), which must therefore carry the final name too.
        tmp = os.path.join(tmp_dir, path.name)
        try:
            sitk.WriteImage(to_sitk(array, geometry), tmp, compress)
        except RuntimeError as exc:  # ITK: disk full, file system refuses, ...
            raise ImageIOError(f"could not write {path} ({str(exc).strip().splitlines()[-1]}); "
                               "check the free space and the folder") from exc
        _verify_image_file(tmp, path, array, geometry)
        for name in sorted(os.listdir(tmp_dir)):  # data file(s) first, the header (the file asked for) last
            if name != path.name:
                self._moves.append((os.path.join(tmp_dir, name), path.parent / name))
        self._moves.append((tmp, path))
        return path

    def _staged(self, path: str | os.PathLike, write) -> Path:
        """Stage ``path``: ``write(tmp)`` fills its temporary file (raising OSError on a short write)."""
        path = Path(path)
        tmp = os.path.join(self._tmp_dir(path), path.name)
        try:
            write(tmp)
        except OSError as exc:
            raise ImageIOError(f"could not write {path} ({exc.strerror or exc}); check the free space "
                               "(and any file-size limit) of the folder; nothing was replaced") from exc
        self._moves.append((tmp, path))
        return path

    def text(self, path: str | os.PathLike, text: str) -> Path:
        data = text.encode("utf-8")

        def write(tmp: str) -> None:
            with open(tmp, "wb") as fh:
                fh.write(data)
                fh.flush()
            if os.path.getsize(tmp) != len(data):
                raise OSError(f"wrote only {os.path.getsize(tmp)} of {len(data)} bytes")

        return self._staged(path, write)

    def file(self, path: str | os.PathLike, source: str | os.PathLike) -> Path:
        """A copy of the file ``source`` (e.g. a model trained in a temporary folder) as ``path``."""
        def write(tmp: str) -> None:
            shutil.copyfile(source, tmp)
            if os.path.getsize(tmp) != os.path.getsize(source):
                raise OSError(f"copied only {os.path.getsize(tmp)} of {os.path.getsize(source)} bytes")

        return self._staged(path, write)

    def commit(self) -> list[Path]:
        done = []
        try:
            for src, dst in self._moves:
                os.chmod(src, default_file_mode())
                os.replace(src, dst)
                done.append(dst)
        finally:
            self.discard()
        return done

    def discard(self) -> None:
        for d in self._tmp_dirs:
            shutil.rmtree(d, ignore_errors=True)
        self._tmp_dirs, self._moves = [], []

    def __enter__(self) -> "StagedWrites":
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        if exc_type is None:
            self.commit()
        else:
            self.discard()


def write_image(path: str | os.PathLike, array_zyx: np.ndarray, geometry: Geometry,
                compress: bool = True) -> Path:
    """Write atomically and verified: written in a temporary folder beside ``path``, read back and
    compared with ``array_zyx``, then renamed into place. A crash, a full disk or a file-size limit
    never leaves half a file and never replaces an existing good one (:class:`ImageIOError`).
    ``bool`` arrays are stored as uint8, float64 as float32."""
    path = Path(path)
    with StagedWrites() as staged:
        staged.image(path, array_zyx, geometry, compress)
    return path


def check_same_grid(reference: Geometry, other: Geometry, reference_name: str = "reference",
                    other_name: str = "image", tolerance: float = 1e-3) -> None:
    """Raise :class:`GeometryMismatchError` naming the first property that differs, and by how much.

    ``tolerance`` is in mm for spacing/origin and absolute for direction cosines; the default
    absorbs float round-off from NIfTI's qform/sform storage.
    """
    if tuple(reference.shape_zyx) != tuple(other.shape_zyx):
        raise GeometryMismatchError(
            f"{other_name} has size {other.shape_xyz} (x×y×z) but {reference_name} has {reference.shape_xyz}; "
            "the channels must be co-registered and resampled onto one grid (e.g. Slicer's "
            "'Resample Scalar/Vector/DWI Volume' or BRAINSFit).")
    checks = (("spacing", reference.spacing, other.spacing, "mm"),
              ("origin", reference.origin, other.origin, "mm"),
              ("direction", reference.direction, other.direction, ""))
    for name, a, b, unit in checks:
        diff = np.abs(np.asarray(a, float) - np.asarray(b, float))
        if diff.max() > tolerance:
            raise GeometryMismatchError(
                f"{other_name} and {reference_name} differ in {name}: {tuple(round(v, 6) for v in b)} vs "
                f"{tuple(round(v, 6) for v in a)} (largest difference {diff.max():.6g}{unit}). "
                "Resample one onto the other's grid first.")
