from google.protobuf.internal import containers as _containers
from google.protobuf.internal import enum_type_wrapper as _enum_type_wrapper
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class DType(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    DTYPE_UNSPECIFIED: _ClassVar[DType]
    FLOAT32: _ClassVar[DType]
    FLOAT16: _ClassVar[DType]
    INT64: _ClassVar[DType]
    INT32: _ClassVar[DType]
    UINT8: _ClassVar[DType]
    BOOL: _ClassVar[DType]
    SIGN: _ClassVar[DType]

class Encoding(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    ENCODING_UNSPECIFIED: _ClassVar[Encoding]
    DENSE: _ClassVar[Encoding]
    DENSE_F16: _ClassVar[Encoding]
    BITMAP: _ClassVar[Encoding]
    BITMAP_VALUES: _ClassVar[Encoding]
    INDEX_VALUES: _ClassVar[Encoding]
    SIGN_FLIPS: _ClassVar[Encoding]
    CODED_BITS: _ClassVar[Encoding]
    CODED_FLIPS: _ClassVar[Encoding]
    CODED_INTS: _ClassVar[Encoding]
    CODED_INT_DELTA: _ClassVar[Encoding]
DTYPE_UNSPECIFIED: DType
FLOAT32: DType
FLOAT16: DType
INT64: DType
INT32: DType
UINT8: DType
BOOL: DType
SIGN: DType
ENCODING_UNSPECIFIED: Encoding
DENSE: Encoding
DENSE_F16: Encoding
BITMAP: Encoding
BITMAP_VALUES: Encoding
INDEX_VALUES: Encoding
SIGN_FLIPS: Encoding
CODED_BITS: Encoding
CODED_FLIPS: Encoding
CODED_INTS: Encoding
CODED_INT_DELTA: Encoding

class Manifest(_message.Message):
    __slots__ = ("architecture", "model_seed", "density", "round", "reference_digest", "kind")
    ARCHITECTURE_FIELD_NUMBER: _ClassVar[int]
    MODEL_SEED_FIELD_NUMBER: _ClassVar[int]
    DENSITY_FIELD_NUMBER: _ClassVar[int]
    ROUND_FIELD_NUMBER: _ClassVar[int]
    REFERENCE_DIGEST_FIELD_NUMBER: _ClassVar[int]
    KIND_FIELD_NUMBER: _ClassVar[int]
    architecture: str
    model_seed: int
    density: float
    round: int
    reference_digest: bytes
    kind: str
    def __init__(self, architecture: _Optional[str] = ..., model_seed: _Optional[int] = ..., density: _Optional[float] = ..., round: _Optional[int] = ..., reference_digest: _Optional[bytes] = ..., kind: _Optional[str] = ...) -> None: ...

class Tensor(_message.Message):
    __slots__ = ("name", "shape", "dtype", "encoding", "count", "data", "values", "model_q")
    NAME_FIELD_NUMBER: _ClassVar[int]
    SHAPE_FIELD_NUMBER: _ClassVar[int]
    DTYPE_FIELD_NUMBER: _ClassVar[int]
    ENCODING_FIELD_NUMBER: _ClassVar[int]
    COUNT_FIELD_NUMBER: _ClassVar[int]
    DATA_FIELD_NUMBER: _ClassVar[int]
    VALUES_FIELD_NUMBER: _ClassVar[int]
    MODEL_Q_FIELD_NUMBER: _ClassVar[int]
    name: str
    shape: _containers.RepeatedScalarFieldContainer[int]
    dtype: DType
    encoding: Encoding
    count: int
    data: bytes
    values: bytes
    model_q: int
    def __init__(self, name: _Optional[str] = ..., shape: _Optional[_Iterable[int]] = ..., dtype: _Optional[_Union[DType, str]] = ..., encoding: _Optional[_Union[Encoding, str]] = ..., count: _Optional[int] = ..., data: _Optional[bytes] = ..., values: _Optional[bytes] = ..., model_q: _Optional[int] = ...) -> None: ...

class ReferencePairs(_message.Message):
    __slots__ = ("slot", "indices", "values")
    SLOT_FIELD_NUMBER: _ClassVar[int]
    INDICES_FIELD_NUMBER: _ClassVar[int]
    VALUES_FIELD_NUMBER: _ClassVar[int]
    slot: int
    indices: bytes
    values: bytes
    def __init__(self, slot: _Optional[int] = ..., indices: _Optional[bytes] = ..., values: _Optional[bytes] = ...) -> None: ...

class Payload(_message.Message):
    __slots__ = ("manifest", "tensors", "pairs")
    MANIFEST_FIELD_NUMBER: _ClassVar[int]
    TENSORS_FIELD_NUMBER: _ClassVar[int]
    PAIRS_FIELD_NUMBER: _ClassVar[int]
    manifest: Manifest
    tensors: _containers.RepeatedCompositeFieldContainer[Tensor]
    pairs: _containers.RepeatedCompositeFieldContainer[ReferencePairs]
    def __init__(self, manifest: _Optional[_Union[Manifest, _Mapping]] = ..., tensors: _Optional[_Iterable[_Union[Tensor, _Mapping]]] = ..., pairs: _Optional[_Iterable[_Union[ReferencePairs, _Mapping]]] = ...) -> None: ...

class Envelope(_message.Message):
    __slots__ = ("format_version", "body", "digest")
    FORMAT_VERSION_FIELD_NUMBER: _ClassVar[int]
    BODY_FIELD_NUMBER: _ClassVar[int]
    DIGEST_FIELD_NUMBER: _ClassVar[int]
    format_version: int
    body: bytes
    digest: bytes
    def __init__(self, format_version: _Optional[int] = ..., body: _Optional[bytes] = ..., digest: _Optional[bytes] = ...) -> None: ...
