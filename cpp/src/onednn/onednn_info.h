#pragma once
#include <string>

namespace slmops::onednn {
// Version of the oneDNN library loaded at run time, "" when built without oneDNN.
std::string version();
}  // namespace slmops::onednn
