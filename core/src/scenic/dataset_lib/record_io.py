"""Reading SequenceExample TFRecords by index, and naming the file of any bad record.

Kept apart from the clip ops and the builders because it knows nothing about clips: it finds
files, holds records in memory or reads them through an offset index (for data of any size),
checks the documented layout (core/docs/video_records.md) and turns every damage into a
`CorruptRecordsError` that names the file (and video).
"""

from __future__ import annotations

import struct
import threading
from collections.abc import Sequence

from scenic.dataset_lib import dataset_utils
from scenic.dataset_lib.write_video_records import IMAGE_KEY, LABEL_INDEX_KEY, VIDEO_ID_KEY


class CorruptRecordsError(dataset_utils.DataError):
    """A TFRecord file that cannot be read, or a record not in the documented layout."""


def resolve_files(patterns: str | Sequence[str], what: str) -> list[str]:
    import tensorflow as tf

    patterns = [patterns] if isinstance(patterns, str) else list(patterns)
    files = []
    for pattern in patterns:
        matched = sorted(tf.io.gfile.glob(pattern))
        if not matched:
            raise FileNotFoundError(f"{what} pattern {pattern!r} matches no files.")
        files.extend(matched)
    return files


def check_record(serialized: bytes, where: str, num_classes: int):
    """Raises CorruptRecordsError unless `serialized` is a video in the documented layout.

    Returns (the parsed tf.train.SequenceExample, `where` with the video's name) so that a
    check of more fields (the audio-visual reader's) need not parse it again.
    """
    import tensorflow as tf
    from google.protobuf.message import DecodeError

    try:
        example = tf.train.SequenceExample.FromString(serialized)
    except DecodeError as e:
        raise CorruptRecordsError(f"{where}: not a tf.train.SequenceExample ({e}).") from None
    video_id = example.context.feature[VIDEO_ID_KEY].bytes_list.value
    name = f"{where} (video {video_id[0].decode(errors='replace')!r})" if video_id else where
    labels = example.context.feature[LABEL_INDEX_KEY].int64_list.value
    if not labels or min(labels) < 0 or max(labels) >= num_classes:
        raise CorruptRecordsError(
            f"{name}: {LABEL_INDEX_KEY} must hold labels in [0, {num_classes}), got {list(labels)}."
        )
    if not example.feature_lists.feature_list[IMAGE_KEY].feature:
        raise CorruptRecordsError(f"{name}: no frames in feature list {IMAGE_KEY!r}.")
    return example, name


def load_records(files: list[str], num_classes: int, check=check_record) -> list[bytes]:
    """Every record of `files` in memory, checksums and contents checked.

    `check(serialized, where, num_classes)` raises CorruptRecordsError for a record not in
    the layout (`check_record`; the audio-visual reader adds its audio fields).
    """
    import tensorflow as tf

    records = []
    for path in files:
        try:
            batches = tf.data.TFRecordDataset(path).batch(4096).as_numpy_iterator()
            chunk = [record for batch in batches for record in batch]
        except tf.errors.OpError as e:
            raise CorruptRecordsError(
                f"Corrupt or truncated TFRecord file {path}: {e.message}"
            ) from None
        for i, serialized in enumerate(chunk):
            check(serialized, f"{path} record {i}", num_classes)
        records.extend(chunk)
    return records


def _crc32c_table() -> list[int]:
    table = []
    for n in range(256):
        for _ in range(8):
            n = (n >> 1) ^ 0x82F63B78 if n & 1 else n >> 1
        table.append(n)
    return table


_CRC32C_TABLE = _crc32c_table()


def masked_crc32c(data: bytes) -> int:
    """The TFRecord checksum (CRC-32C, rotated and offset); pure Python, for short headers."""
    crc = 0xFFFFFFFF
    for byte in data:
        crc = _CRC32C_TABLE[(crc ^ byte) & 0xFF] ^ (crc >> 8)
    crc ^= 0xFFFFFFFF
    return (((crc >> 15) | (crc << 17)) + 0xA282EAD8) & 0xFFFFFFFF


class IndexedRecords(Sequence):
    """Records of TFRecord files read one at a time by index, through an offset index.

    Building the index reads each record's 12-byte header (length + its checksum) and seeks
    over the payload, so truncation and broken framing are found at once. The payload's own
    checksum is not verified (that would read everything); a damaged payload is reported,
    naming the file, when the record is read and fails to parse.
    """

    def __init__(self, files: list[str], num_classes: int, check=check_record):
        import tensorflow as tf

        self.files, self.num_classes, self.check, self.index = files, num_classes, check, []
        for f, path in enumerate(files):
            size = tf.io.gfile.stat(path).length
            with tf.io.gfile.GFile(path, "rb") as fh:
                offset = 0
                while offset < size:
                    header = fh.read(12)
                    (length,) = struct.unpack("<Q", header[:8]) if len(header) == 12 else (0,)
                    if len(header) < 12 or struct.unpack("<I", header[8:])[0] != masked_crc32c(
                        header[:8]
                    ):
                        raise CorruptRecordsError(
                            f"Corrupt or truncated TFRecord file {path}: bad record header at "
                            f"byte {offset}."
                        )
                    if offset + 16 + length > size:
                        raise CorruptRecordsError(
                            f"Corrupt or truncated TFRecord file {path}: record at byte "
                            f"{offset} needs {length + 16} bytes, the file ends after "
                            f"{size - offset}."
                        )
                    self.index.append((f, offset + 12, length))
                    offset += 16 + length
                    fh.seek(offset)
        self._handles, self._lock = {}, threading.Lock()  # iterators may share this object

    def __len__(self):
        return len(self.index)

    def __getitem__(self, i):
        import tensorflow as tf

        f, offset, length = self.index[i]
        with self._lock:
            if f not in self._handles:
                self._handles[f] = tf.io.gfile.GFile(self.files[f], "rb")
            fh = self._handles[f]
            fh.seek(offset)
            data = fh.read(length)
        self.check(data, f"{self.files[f]} record at byte {offset - 12}", self.num_classes)
        return data


def read_records(patterns, what: str, num_classes: int, in_memory: bool, check=check_record):
    """The records of the files matching `patterns`: in memory (`load_records`), or read by
    offset (`IndexedRecords`); `what` names the argument in a no-match error."""
    read = load_records if in_memory else IndexedRecords
    return read(resolve_files(patterns, what), num_classes, check)


def raise_named_errors(iterator):
    """Re-raises a CorruptRecordsError that tf.data wrapped (indexed reading) as itself."""
    import tensorflow as tf

    try:
        yield from iterator
    except tf.errors.OpError as e:
        marker = f"{CorruptRecordsError.__name__}: "
        if marker not in e.message:
            raise
        raise CorruptRecordsError(e.message.split(marker, 1)[1].split("\n")[0]) from None
