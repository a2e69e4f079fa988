"""Int8 packages that keep their accuracy: ``imgclf quantize``.

Modules, one job each: :mod:`~imgclf.quantize.calibration` (the calibration images and their
manifest), :mod:`~imgclf.quantize.sources` (a package's default calibration and gate data),
:mod:`~imgclf.quantize.photos` (the real photos shipped for zoo models),
:mod:`~imgclf.quantize.fixes` (which layers stay float, bias correction),
:mod:`~imgclf.quantize.quantizer` (fp32 ONNX -> int8 QDQ ONNX) and :mod:`~imgclf.quantize.build`
(the int8 package, gated and recorded). The gate itself is :mod:`imgclf.evaluation.gate`.
"""
