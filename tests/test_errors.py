"""findlit's errors survive torch's DataLoader workers as themselves, with their own message."""

from __future__ import annotations

import pickle
import sys
from pathlib import Path

import pytest
from torch._utils import ExceptionWrapper

from findlit.data.feature_cache.errors import CorruptShardError, StaleCacheError
from findlit.encoders.prompt_cache import PromptCacheError
from findlit.errors import ConfigError, DataError, FindlitError, original_message


def reraised(error: BaseException) -> BaseException:
    """What the main process gets when a DataLoader worker raised ``error`` (torch's own code)."""
    try:
        try:
            raise KeyError("an earlier error")  # the message must come from the last traceback
        except KeyError as cause:
            raise error from cause
    except type(error):
        wrapper = ExceptionWrapper(sys.exc_info(), where="in DataLoader worker process 0")
    with pytest.raises(BaseException) as caught:
        wrapper.reraise()
    return caught.value


@pytest.mark.parametrize(
    "error",
    [
        DataError("cannot decode image", "a.jpg", record="image_id=1", key="data.train[0].paths.image_root"),
        DataError("several\nlines"),
        ConfigError("data.train[0].transforms: bad"),
        StaleCacheError("stale feature cache at x:\n  encoder: a != b"),
        CorruptShardError(Path("cache/shard-00001.bin"), "record 3 fails its checksum"),
        PromptCacheError("unreadable", "cache/manifest.json"),
    ],
    ids=lambda error: type(error).__name__,
)
def test_a_worker_error_is_reraised_as_itself_with_its_message(error: FindlitError) -> None:
    again = reraised(error)
    assert type(again) is type(error)
    assert str(again) == str(error)


def test_a_rebuilt_data_error_keeps_its_rendered_message() -> None:
    error = DataError("missing", "a.json", key="data.val[0].paths.panoptic_json")
    again = reraised(error)
    assert isinstance(again, DataError) and again.message == str(error)
    assert again.with_key("other").key == "other"


def test_data_error_pickles_with_its_fields() -> None:
    error = DataError("missing", "a.json", record="image_id=3", key="k")
    copy = pickle.loads(pickle.dumps(error))
    assert (copy.message, copy.file, copy.record, copy.key, str(copy)) == (
        "missing",
        "a.json",
        "image_id=3",
        "k",
        str(error),
    )


def test_other_text_is_left_alone() -> None:
    assert original_message(DataError, "Caught nothing") == "Caught nothing"
    assert original_message(DataError, "plain message") == "plain message"
