"""Synthetic designs and facilities with a realistic skew: process popularity Zipf-like,
facilities at real fab lab coordinates (from ../shared/data), 1-8 parts per design, some
facilities not active. Deterministic for a seed."""

from __future__ import annotations

import csv
import random
from pathlib import Path

from contracts.models import Box, Design, Equipment, Facility, FacilityStatus, Location, Part, Term
from contracts.vocabulary import materials, processes

DATA = Path(__file__).resolve().parents[2] / "shared" / "data"
MAKEABLE = [e.id for e in processes().entries.values() if e.requirement]
MATERIALS = list(materials().entries)


def zipf_weights(n: int, s: float = 1.1) -> list[float]:
    return [1 / (rank ** s) for rank in range(1, n + 1)]


def city_coordinates() -> list[tuple[float, float]]:
    path = DATA / "okw" / "fablabs_with_capabilities.csv"
    out = []
    if path.exists():
        with path.open(encoding="utf-8", errors="replace", newline="") as f:
            for row in csv.DictReader(f):
                try:
                    out.append((float(row["latitude"]), float(row["longitude"])))
                except (TypeError, ValueError):
                    continue
    return out or [(48.85, 2.35), (5.65, -0.16), (-23.55, -46.63), (35.68, 139.69)]


class Generator:
    def __init__(self, seed: int = 7) -> None:
        self.rng = random.Random(seed)
        order = MAKEABLE[:]
        self.rng.shuffle(order)
        # the most popular processes first, as in the real data
        for popular in ("laser-cutting", "fdm", "3d-printing", "cnc-milling"):
            order.remove(popular)
            order.insert(0, popular)
        self.process_order, self.process_weights = order, zipf_weights(len(order))
        self.material_weights = zipf_weights(len(MATERIALS))
        self.cities = city_coordinates()

    def _processes(self, low: int, high: int) -> list[str]:
        count = self.rng.randint(low, high)
        return list(dict.fromkeys(self.rng.choices(self.process_order, self.process_weights,
                                                   k=count)))

    def _materials(self, high: int) -> list[str]:
        return list(dict.fromkeys(self.rng.choices(MATERIALS, self.material_weights,
                                                   k=self.rng.randint(0, high))))

    def facility(self, i: int) -> Facility:
        lat, lon = self.rng.choice(self.cities)
        offered = self._processes(1, 6)
        equipment = [
            Equipment(equipment_type=p, processes=[_term(p)],
                      materials=[_term(m) for m in self._materials(3)],
                      working_volume=Box(x_mm=self.rng.choice([200, 300, 600, 1200]),
                                         y_mm=self.rng.choice([200, 300, 600, 900]),
                                         z_mm=self.rng.choice([200, 300, None])))
            for p in offered if self.rng.random() < 0.5]
        status = FacilityStatus.active if self.rng.random() < 0.9 else self.rng.choice(
            [FacilityStatus.planned, FacilityStatus.closed, FacilityStatus.temporary_closure])
        return Facility(
            id=f"fac-{i}", name=f"Facility {i}", status=status,
            location=Location(lat=lat + self.rng.uniform(-0.2, 0.2),
                              lon=lon + self.rng.uniform(-0.2, 0.2)),
            processes=[_term(p) for p in offered],
            materials=[_term(m) for m in self._materials(2)], equipment=equipment)

    def design(self, i: int) -> Design:
        parts = []
        for n in range(self.rng.randint(1, 8)):
            process = self._processes(1, 1)
            parts.append(Part(name=f"part {n}", processes=[_term(p) for p in process],
                              materials=[_term(m) for m in self._materials(1)],
                              outer_dimensions=Box(x_mm=self.rng.uniform(5, 500),
                                                   y_mm=self.rng.uniform(5, 300),
                                                   z_mm=self.rng.uniform(1, 200))))
        needed = list(dict.fromkeys(t.id for p in parts for t in p.processes))
        needed_materials = list(dict.fromkeys(t.id for p in parts for t in p.materials))
        return Design(id=f"des-{i}", name=f"Design {i}", okh_format="synthetic",
                      processes=[_term(p) for p in needed],
                      materials=[_term(m) for m in needed_materials], parts=parts)


def _term(id_: str) -> Term:
    return Term(id=id_, label=id_)
