"""The .dcz compressed model file: sparse relative-index storage, shared-weight codebooks and
Huffman / rANS coded streams, with an exact round trip.

    report = pack(state_dict, "model.dcz", compressed={"fc1.weight": {"bits": 6}})
    dcz = load("model.dcz")          # dcz.state_dict equals the input bit for bit (-0.0 -> +0.0)
    info = inspect("model.dcz")      # bytes per tensor and stream against the entropy bound
"""
from ._api import Dcz, LayerInfo, PackReport, inspect, load, pack
from ._format import FORMAT_VERSION
from ._streams import CODERS, StreamInfo
from ._tensor import TensorRow

__all__ = ["pack", "load", "inspect", "PackReport", "Dcz", "LayerInfo",
           "TensorRow", "StreamInfo", "CODERS", "FORMAT_VERSION"]
