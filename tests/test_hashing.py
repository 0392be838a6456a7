"""The plan's hashes equal pandas' bit for bit (NVTabular hashes out-of-vocabulary values with them)."""

import numpy as np
import pandas as pd
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from tritonrec.transform._hashing import IndexHashCache, combine_with_index, pandas_hash_array

dtypes = st.sampled_from([np.int64, np.int32, np.float64, np.float32, np.uint64, np.bool_])


@given(hnp.arrays(dtype=dtypes, shape=st.integers(0, 300)))
def test_hash_array_equals_pandas(values):
    expected = pd.util.hash_array(values)
    np.testing.assert_array_equal(pandas_hash_array(values), expected)


@settings(max_examples=50)
@given(hnp.arrays(dtype=st.sampled_from([np.int64, np.float64]), shape=st.integers(0, 300)))
def test_row_hash_with_index_equals_hash_pandas_object(values):
    series = pd.Series(values)
    expected = pd.util.hash_pandas_object(series, index=True).to_numpy()
    index_hash = IndexHashCache(initial=4).get(np.arange(len(values), dtype=np.int64))
    np.testing.assert_array_equal(combine_with_index(pandas_hash_array(values), index_hash), expected)


def test_index_cache_grows():
    cache = IndexHashCache(initial=2)
    rows = np.array([0, 5000, 3], dtype=np.int64)
    np.testing.assert_array_equal(cache.get(rows), pd.util.hash_array(rows))
