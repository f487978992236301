# FindCUDNN: cuDNN 9 (graph API) and, if present, the cuDNN frontend's C++ headers
# (PyPI's nvidia-cudnn-frontend puts them under site-packages/include; scripts/setup.sh installs it
# and CMake is pointed at it with -DCUDNN_FRONTEND_INCLUDE_DIR or finds it through python3).
# Defines CUDNN_FOUND, CUDNN::cudnn and CUDNN_FRONTEND_INCLUDE_DIR (may be empty).
find_path(CUDNN_INCLUDE_DIR cudnn.h HINTS $ENV{CUDNN_ROOT} ${CUDAToolkit_INCLUDE_DIRS} /usr/local/cuda
          PATH_SUFFIXES include)
find_library(CUDNN_LIBRARY NAMES cudnn HINTS $ENV{CUDNN_ROOT} ${CUDAToolkit_LIBRARY_DIR} /usr/local/cuda
             PATH_SUFFIXES lib lib64)
include(FindPackageHandleStandardArgs)
find_package_handle_standard_args(CUDNN DEFAULT_MSG CUDNN_INCLUDE_DIR CUDNN_LIBRARY)
if(CUDNN_FOUND AND NOT TARGET CUDNN::cudnn)
  add_library(CUDNN::cudnn UNKNOWN IMPORTED)
  set_target_properties(CUDNN::cudnn PROPERTIES IMPORTED_LOCATION ${CUDNN_LIBRARY}
                        INTERFACE_INCLUDE_DIRECTORIES ${CUDNN_INCLUDE_DIR})
endif()
find_path(CUDNN_FRONTEND_INCLUDE_DIR cudnn_frontend.h
          HINTS ${CMAKE_SOURCE_DIR}/.deps/pydeps/include $ENV{CUDNN_FRONTEND_ROOT}/include)
if(NOT CUDNN_FRONTEND_INCLUDE_DIR)
  message(STATUS "cuDNN frontend headers not found: attention uses the plain CUDA kernel")
  set(CUDNN_FRONTEND_INCLUDE_DIR "")
endif()
