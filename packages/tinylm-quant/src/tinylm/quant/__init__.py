"""tinylm.quant: TinyLM quantization through torchao: INT8, INT4, float8 and QAT.

from tinylm.quant import quantize, save_quantized, load_quantized
model = quantize(load_checkpoint("models/shakespeare"), "int8_weight_only")

Importing the package registers its schemes in ``tinylm.core.QUANT_SCHEMES`` (``schemes.py`` lists them).
"""

from tinylm.quant.api import DEFAULT_KEEP, QuantInfo, linear_filter, model_bytes, quant_info, quantize
from tinylm.quant.float8_training import convert_to_float8_training
from tinylm.quant.qat import QAT_SCHEMES, convert_qat, is_qat_prepared, prepare_qat
from tinylm.quant.schemes import SCHEMES, QuantScheme, SchemeUnavailableError
from tinylm.quant.serialization import is_quantized_checkpoint, load_model, load_quantized, save_quantized
from tinylm.quant.training import TRAINING_SCHEMES, finish_training, prepare_for_training

__all__ = [
    "DEFAULT_KEEP",
    "QAT_SCHEMES",
    "SCHEMES",
    "TRAINING_SCHEMES",
    "QuantInfo",
    "QuantScheme",
    "SchemeUnavailableError",
    "convert_qat",
    "convert_to_float8_training",
    "finish_training",
    "is_qat_prepared",
    "is_quantized_checkpoint",
    "linear_filter",
    "load_model",
    "load_quantized",
    "model_bytes",
    "prepare_for_training",
    "prepare_qat",
    "quant_info",
    "quantize",
    "save_quantized",
]
