"""The semi-supervised VAEs of Kingma, Rezende, Mohamed & Welling 2014 (M2, M1+M2) and of
Maaløe, Sønderby, Sønderby & Winther 2016 (the auxiliary ADGM and SDGM), one joint module: the
classifier q(y | .) is part of the generative model. One file per idea:

- :mod:`.bound`: the M2 bound as pure functions (L, U, alpha, the Gaussian draw);
- :mod:`.auxiliary`: the auxiliary variable a of ADGM / SDGM (its nets and its bound term);
- :mod:`.m1`: the M1 front end of M1+M2 (a frozen unconditional VAE);
- :mod:`.options`: the sub-configs ``model.m2``, ``model.m1``, ``model.auxiliary``, read and
  checked in one place (conf/model/ssl_vae.yaml documents each option);
- :mod:`.module`: :class:`SSLVAEModule`, the LightningModule that wires them.

M2: generative model p(y) p(z) p(x | y, z), p(y) uniform over the K classes, p(z) = N(0, I);
inference model q(y | x) (the classifier) and q(z | x, y). All bounds are in nats per image:

- labeled: ``L(x, y) = log p(x | y, z) + log p(y) - KL(q(z | x, y) || p(z))``, z ~ q(z | x, y);
- unlabeled: ``U(x) = sum_y q(y | x) L(x, y) + H(q(y | x))``, the sum over ALL K classes computed
  exactly (the K copies of the batch in one pass; y is never sampled);
- training loss per step: ``-mean_l L(x_l, y_l) - mean_u U(x_u) + alpha * mean_l CE(q(y | x_l), y_l)``
  with ``alpha = model.m2.alpha.scale * N_total / N_labeled`` (scale 0.1 in the authors' code;
  N_total: the unlabeled pool, labeled images included) unless ``model.m2.alpha.value`` is given.

M1+M2 (``model.m1.ckpt=<checkpoint of an unconditional model=vae run>``): M2 on the latent code
z1 of a frozen VAE M1 instead of the pixels, z1 ~ q(z1 | x) redrawn each step
(``model.m1.features=sample``, as in the paper) or its mean; evaluation classifies the posterior
mean of z1. M2's likelihood of z1 is Gaussian, with one learned sigma
(``model.m2.likelihood.variance=shared``) or, as in the authors' code, a variance per dimension
and example that the decoder outputs beside the mean (``variance=decoded``). Its samples and
reconstructions are decoded back to images by M1's decoder.

Auxiliary models (``model.auxiliary.kind=adgm|sdgm``): an auxiliary variable a with inference
model q(a | x) q(y | a, x) q(z | a, y, x); generative model p(y) p(z) p(x | y, z) p(a | x, y, z)
(ADGM) or p(y) p(z) p(a | z, y) p(x | a, y, z) (SDGM). With a ~ q(a | x) the labeled bound gains
``log p(a | .) - log q(a | x)``, the unlabeled bound is M2's with q(y | a, x) and the classifier
term is ``alpha * CE(q(y | a, x_l), y_l)``. At evaluation q(y | x) = E_q(a|x)[q(y | a, x)],
averaged over ``model.auxiliary.eval_samples`` draws of a (0: a at its posterior mean).

``model.m2.mc_samples`` S: every training bound and the classifier term are averaged over S draws
of the latent variables (each batch repeated S times). Evaluation (``val/acc``, ``test/acc``,
the report, checkpoint selection) classifies with q(y | x); ``val/elbo`` / ``test/elbo`` are the
unlabeled bound U (for M1+M2 a bound on log p(z1), not on log p(x)).
"""

from gendisc.models.ssl_vae.module import SSLVAEModule

__all__ = ["SSLVAEModule"]
