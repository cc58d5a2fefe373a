"""Attacks, one call shape each (torchattacks style, no hidden global state).

pgd          PGD (ℓ2 / ℓ∞), single-step PGD, Gaussian noise, robust accuracy under PGD.
penultimate  Renofeation's penultimate-layer attack on the source, and the attack success rate.
cache        adversarial sets computed once per (source, clean images' content, attack, kernel version) key and stored.
"""

from workers.attacks.cache import (
    AdversarialSet,
    adversarial_set_path,
    attack_key,
    attack_seed,
    cached_adversarial_set,
    clean_digest,
    read_adversarial_set,
    write_adversarial_set,
)
from workers.attacks.penultimate import (
    ATTACK_BATCH,
    attack_success_rate,
    evaluate_asr,
    normalised_images,
    penultimate_attack,
    penultimate_objective,
    predict_normalised,
)
from workers.attacks.pgd import NORMS, gaussian_noise, pgd, pgd1, robust_accuracy

__all__ = [
    "ATTACK_BATCH",
    "AdversarialSet",
    "NORMS",
    "adversarial_set_path",
    "attack_key",
    "attack_seed",
    "attack_success_rate",
    "cached_adversarial_set",
    "clean_digest",
    "evaluate_asr",
    "gaussian_noise",
    "normalised_images",
    "penultimate_attack",
    "penultimate_objective",
    "pgd",
    "pgd1",
    "predict_normalised",
    "read_adversarial_set",
    "robust_accuracy",
    "write_adversarial_set",
]
