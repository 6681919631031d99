"""SKDCGN: counterfactual generative networks (Sauer & Geiger, ICLR 2021) distilled, black-box,
into small student generators (Ambekar et al., 2022; students after TinyGAN, Chang & Lu, ACCV
2020).

composition   x = m*f + (1-m)*b, counterfactual labels, the texture shuffler
data          coloured digits (colored, double_colored, wildlife) with ground-truth mechanisms
mechanisms    class-conditional mechanism generators and the CGN composing them
teacher_fit   the default teacher: fitted with supervision from the known mechanisms
cgn_mnist     the CGN authors' published MNIST teachers (32x32), loaded strictly, unchanged
blackbox      the boundary: query access only, stored query/answer sets
student       student generators, discriminator, TinyGAN's losses
counterfactuals, classifier   counterfactual datasets and the invariant classifier
pipeline, cache, config   one experiment end to end, shared on disk; its config schema
(sweeps of it run through the one engine: ``kdci_ray.engine.skdcgn``)
"""
