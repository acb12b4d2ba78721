"""xhyp.datasets: data files -> ``X`` (CSR ``N x F``, float32) and ``Y`` (CSR ``N x L``, binary).

* :mod:`~xhyp.datasets.formats`: Extreme Classification Repository text files, Mulan and
  Clus-HMC ARFF files (``DataFormatError`` names the file and line of any problem);
* :mod:`~xhyp.datasets.registry`: named datasets, where their files live, ``fetch`` (download)
  and the propensity parameters;
* :mod:`~xhyp.datasets.hmc`: the hierarchical multi-label sets (label hierarchy, C-HMCNN's
  preprocessing, train / validation / test splits);
* :mod:`~xhyp.datasets.loading`: :func:`load_split`, the one loader of a split by name or file;
* :mod:`~xhyp.datasets.synthetic`: generated data (the ``synthetic-hier`` toy problem, and
  large look-alikes of real datasets for benchmarks).

Feature preprocessing (L2, tf-idf) is part of a model: :mod:`xhyp.embedding.features`.
"""
from .formats import DataFormatError, read_hmc_arff, read_mulan_arff, read_xc, read_xc_header, write_xc
from .loading import load_dataset, load_split
from .registry import (DATASETS, DatasetNotFoundError, DatasetSpec, FetchError, dataset_info, fetch, get_spec,
                       propensity_params, resolve_data_dir)

__all__ = ["DataFormatError", "read_xc", "read_xc_header", "write_xc", "read_mulan_arff", "read_hmc_arff",
           "DATASETS", "DatasetSpec", "DatasetNotFoundError", "FetchError", "get_spec", "resolve_data_dir",
           "load_dataset", "load_split", "propensity_params", "fetch", "dataset_info"]
