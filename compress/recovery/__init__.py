"""Recovery training: distillation from the uncompressed teacher, QAT, LoRA; resumable; one or many processes.

    from compress.recovery import RecoverConfig, recover
    report = recover(student, teacher=original, data=splits,
                     config=RecoverConfig(steps=500, output_dir="run/", resume=True))
    print(report)

Files: ``config.py`` (RecoverConfig), ``loop.py`` (recover), ``objective.py``
(the loss of a micro-batch), ``losses.py`` (KD / top-k KD / CE on logit
tensors), ``schedule.py`` (learning rate, QAT lambda), ``lora.py`` (adapters,
merge), ``teacher.py`` (teacher checks, offline top-k logits), ``batches.py``
(data checks and order), ``heldout.py`` (evaluation, early stopping),
``state.py`` (checkpoints), ``distributed.py`` (torchrun / DDP), ``fsdp.py``
(sharded training of large models), ``runlog.py`` (progress, JSON log, plot),
``report.py``.
"""
from compress.recovery.config import RecoverConfig, RecoverError
from compress.recovery.distributed import is_main_process
from compress.recovery.lora import LoRALinear, add_lora, lora_parameters, merge_lora
from compress.recovery.loop import StepInfo, recover
from compress.recovery.losses import ce_loss, hidden_loss, kd_loss, topk_kd_loss, topk_logprobs
from compress.recovery.report import RecoverReport
from compress.recovery.schedule import lr_factor, qat_lambda
from compress.recovery.teacher import OfflineTeacher, precompute_teacher

__all__ = [
    "LoRALinear",
    "OfflineTeacher",
    "RecoverConfig",
    "RecoverError",
    "RecoverReport",
    "StepInfo",
    "add_lora",
    "ce_loss",
    "hidden_loss",
    "is_main_process",
    "kd_loss",
    "lora_parameters",
    "lr_factor",
    "merge_lora",
    "precompute_teacher",
    "qat_lambda",
    "recover",
    "topk_kd_loss",
    "topk_logprobs",
]
