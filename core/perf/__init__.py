"""Performance: the FLOPs model (:mod:`.flops`), the peak table (:mod:`.peaks`), timing
(:mod:`.timing`) and ``zoo bench`` (:mod:`.bench`)."""
